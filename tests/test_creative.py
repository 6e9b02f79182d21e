"""Creatives: layout never overflows (checked on the pixels, not only on the layout's own record),
WCAG contrast against hand-computed values, the product check against the wrong product, the
diffusion wiring with a tiny random pipeline, and the HTTP route and the batch job over a small index.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from conftest import LUMA_CATALOG, deploy_app, luma_rows, publish_model
from PIL import Image

from mmray.config import CreativeConfig, DiffusionConfig, ModelConfig
from mmray.creative import CreativeRequestError, CreativeStudio, Product, resolve_format
from mmray.creative.checks import legibility_check
from mmray.creative.layout import safe_area
from mmray.creative.text import contrast_ratio, relative_luminance, worst_contrast

ROWS = {r["id"]: r for r in luma_rows()}


def product(item_id: str, title: str | None = None, photo_of: str | None = None, price=None) -> Product:
    r = ROWS[item_id]
    photo = Image.open(LUMA_CATALOG.parent / ROWS[photo_of or item_id]["images"][0]).convert("RGB")
    return Product(r["id"], r["product_id"], title or r["title"], photo, r["price"] if price is None else price,
                   r.get("category"), r.get("color"), r.get("gender"))


class RecordingStudio(CreativeStudio):
    """Keeps each creative's canvas as it was just before the texts were drawn."""

    def _texts(self, canvas, *args):
        self.before_text = canvas.copy()
        return super()._texts(canvas, *args)


@pytest.fixture(scope="module")
def cfg() -> CreativeConfig:
    return CreativeConfig()


LONG_TITLES = [
    "Chaz Kangeroo Hoodie",
    "Ultra-Lightweight Breathable Water-Resistant Packable Hooded Running Jacket with Reflective Trim " * 3,
    "Supercalifragilisticexpialidociouslyextraordinarilyunbelievablylongproductnamewithoutanyspaces" * 2,
    "Ünïcödé Ångström Çafé Crème Brûlée Jacket — Édition Spéciale 2026",
    "A " * 120,
]


@pytest.mark.parametrize("title", LONG_TITLES, ids=["short", "long", "one-word", "accents", "many-words"])
def test_layout_never_overflows_in_any_format(cfg, title):
    """Every pixel the texts change lies in the safe area and off the product, in every format, and
    the layout's own record agrees (each text inside its box; cut titles end in an ellipsis)."""
    studio = RecordingStudio(cfg)
    formats = [*cfg.formats, "1600x400", "400x1600", "120x600"]
    for fmt in formats:
        c = studio.render(product("MH01-Black", title, price=123456.78), fmt)
        f = resolve_format(fmt, cfg)
        assert c.image.size == (f.width, f.height)
        changed = np.any(np.asarray(c.image) != np.asarray(studio.before_text), axis=2)
        ys, xs = np.nonzero(changed)
        assert len(xs) > 0, fmt  # the texts were drawn
        safe = safe_area(f)
        assert xs.min() >= safe.x0 and xs.max() < safe.x1 and ys.min() >= safe.y0 and ys.max() < safe.y1, fmt
        product_pixels = np.asarray(c.product_mask) > 0
        assert not (changed & product_pixels).any(), f"{fmt}: text drawn over the product"
        assert c.checks["layout"]["passed"], (fmt, c.checks["layout"])
        assert c.checks["legibility"]["passed"], (fmt, c.checks["legibility"])
        head = next(e for e in c.elements if e["role"] == "headline")
        normalised = " ".join(title.split())
        if head["truncated"]:
            assert head["text"].endswith("\u2026")
        assert head["text"].rstrip("\u2026").replace(" ", "") in normalised.replace(" ", ""), (fmt, head["text"])
        assert {e["role"] for e in c.elements} == {"headline", "price", "cta"}
        assert next(e for e in c.elements if e["role"] == "price")["text"] == "$123456.78"


def test_product_is_never_distorted(cfg):
    """The placed product (its mask's bounding box in the creative) keeps the cut-out's aspect ratio."""
    from mmray.creative.cutout import cut_out

    studio = CreativeStudio(cfg)
    for item in ("MH01-Black", "24-WG02", "WS05-Orange"):
        p = product(item)
        cut = cut_out(p.image, cfg.mask_threshold)
        for fmt in cfg.formats:
            c = studio.render(p, fmt)
            ys, xs = np.nonzero(np.asarray(c.product_mask) > 128)
            w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
            cw, ch = cut.image.size
            assert abs(w / h - cw / ch) < 0.03 * cw / ch, (item, fmt, w, h, cw, ch)
            assert c.checks["aspect"]["passed"]


def test_contrast_matches_hand_computed_values():
    # Relative luminance of #808080: ((128/255 + 0.055) / 1.055) ** 2.4 = 0.21586
    assert float(relative_luminance((128, 128, 128))) == pytest.approx(0.21586, abs=1e-4)
    assert float(contrast_ratio((0, 0, 0), (255, 255, 255))) == pytest.approx(21.0)
    assert float(contrast_ratio((255, 255, 255), (0, 0, 0))) == pytest.approx(21.0)
    # #767676 on white is the classic AA limit: 1.05 / (0.18116 + 0.05) = 4.542; #777777 just fails (4.478)
    assert float(contrast_ratio((0x76,) * 3, (255, 255, 255))) == pytest.approx(4.542, abs=2e-3)
    assert float(contrast_ratio((0x77,) * 3, (255, 255, 255))) == pytest.approx(4.478, abs=2e-3)
    assert float(contrast_ratio((255, 0, 0), (255, 255, 255))) == pytest.approx(1.05 / 0.2626, abs=2e-3)
    # worst case over a background: its darkest pixel for white text
    bg = np.array([[[255, 255, 255], [0x76, 0x76, 0x76]], [[200, 200, 200], [250, 250, 250]]], np.uint8)
    assert worst_contrast((0, 0, 0), bg) == pytest.approx(float(contrast_ratio((0, 0, 0), (0x76,) * 3)))
    passed = legibility_check([{"role": "a", "contrast": 4.54, "size_px": 12}], 4.5, 12)
    failed = legibility_check([{"role": "a", "contrast": 4.48, "size_px": 12}, {"role": "b", "contrast": 9, "size_px": 11}],
                              4.5, 12)
    assert passed["passed"] and not failed["passed"]
    assert [t["passed"] for t in failed["texts"]] == [False, False]


class HostileStudio(RecordingStudio):
    """Paints black and white stripes (4 px) over the text column before the texts are laid out."""

    def _texts(self, canvas, layout, *args):
        col = layout.text
        stripes = np.zeros((col.h, col.w, 3), np.uint8)
        stripes[:, (np.arange(col.w) // 4) % 2 == 0] = 255
        canvas.paste(Image.fromarray(stripes), (col.x0, col.y0))
        return super()._texts(canvas, layout, *args)


def test_text_stays_legible_on_a_hostile_background(cfg):
    """Black and white stripes under the text: neither dark nor light text passes on them alone, so
    a panel goes behind the texts; the contrast is then measured on the final pixels."""
    studio = HostileStudio(cfg)
    for fmt in ("1200x628", "1080x1080"):
        c = studio.render(product("MH01-Black"), fmt)
        before = np.asarray(studio.before_text)
        head = next(e for e in c.elements if e["role"] == "headline")
        x0, y0, x1, y1 = head["box"]
        region = before[y0:y1, x0:x1]
        assert max(worst_contrast(col, region) for col in ((17, 17, 17), (255, 255, 255))) < 4.5  # hostile indeed
        assert c.checks["legibility"]["passed"], c.checks["legibility"]
        # the final image: a ring of pixels just outside the headline's ink is what the text is read against
        final = np.asarray(c.image)
        ring = np.concatenate([final[y0 - 3, x0 - 3:x1 + 3], final[y1 + 2, x0 - 3:x1 + 3],
                               final[y0 - 3:y1 + 3, x0 - 3], final[y0 - 3:y1 + 3, x1 + 2]])
        colour = tuple(int(head["color"][i:i + 2], 16) for i in (1, 3, 5))
        assert worst_contrast(colour, ring.reshape(-1, 1, 3)) >= 4.5
        assert worst_contrast(colour, before[y0 - 3:y1 + 3, x0 - 3:x1 + 3]) < 4.5  # the same ring before: not


def test_formats_and_styles_are_validated(cfg):
    studio = CreativeStudio(cfg)
    for bad, code in (("banner", "unknown_format"), ("5000x5000", "size_too_large"), ("2048x2000", "size_too_large"),
                      ("100x50", "size_too_small"), ("../x", "unknown_format")):
        with pytest.raises(CreativeRequestError) as e:
            studio.check_request([bad], None)
        assert e.value.code == code, bad
    with pytest.raises(CreativeRequestError) as e:
        studio.check_request(["1200x628"] * (cfg.max_formats + 1), None)
    assert e.value.code == "too_many_formats"
    with pytest.raises(CreativeRequestError) as e:
        studio.check_request(["1200x628"], "neon")
    assert e.value.code == "unknown_style"
    with pytest.raises(CreativeRequestError) as e:
        studio.check_request(["1200x628"], "diffusion")
    assert e.value.code == "style_unavailable"
    assert studio.check_request(["1200x628", "640x640"], None) == cfg.style


# --------------------------------------------------------------------------- the product check


@pytest.fixture(scope="module")
def lite_embedder():
    """The lite dual encoder (pretrained towers from their PyPI packages, projection heads untrained)."""
    from mmray.embedder import Embedder
    from mmray.model import build_model

    return Embedder(build_model(ModelConfig(kind="lite", embed_dim=256)), batch_size=16)


def test_similarity_check_fails_on_the_wrong_product(cfg, lite_embedder):
    studio = CreativeStudio(cfg, embed=lite_embedder.embed_images)
    pairs = [("MH01-Black", "24-WG02"), ("WS05-Orange", "MH01-Black"), ("24-WG02", "WS05-Orange")]
    for right, wrong in pairs:
        catalog_photo = product(right).image
        for fmt in ("1200x628", "300x250"):
            ok = studio.render(product(right), fmt)
            assert ok.checks["product"]["passed"], (right, fmt, ok.checks["product"])
            assert ok.passed
            swapped = studio.render(product(right, photo_of=wrong), fmt)  # right's title and price, wrong photo
            verdict = studio.check_product(swapped, catalog_photo)
            assert not verdict["passed"], (right, wrong, fmt, verdict)
            assert verdict["similarity"] < ok.checks["product"]["similarity"] - 0.1


# --------------------------------------------------------------------------- diffusion


def tiny_inpainting_pipeline(folder: str) -> str:
    """A randomly initialised Stable Diffusion inpainting pipeline of a few thousand weights, saved
    in diffusers' layout (nothing downloaded: the tokenizer's vocabulary is written here)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=32)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=64))
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[ch], vocab[ch + "</w>"] = 3 + 2 * i, 4 + 2 * i
    tok_dir = os.path.join(folder, "vocab")
    os.makedirs(tok_dir)
    with open(os.path.join(tok_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(tok_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                              pad_token="!", model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = os.path.join(folder, "pipeline")
    pipe.save_pretrained(out)
    return out


def test_diffusion_wiring_with_a_tiny_random_pipeline(cfg, tmp_path):
    """The pipeline loads from the configured folder, is asked to repaint everything but the product,
    runs, and the creative keeps the product's own pixels exactly while its scene changes."""
    from mmray.creative.diffusion import DiffusionPainter

    weights = tiny_inpainting_pipeline(str(tmp_path))
    painter = DiffusionPainter.load(DiffusionConfig(weights=weights, device="cpu", dtype="float32", steps=2,
                                                    work_side=64))
    calls = []
    real = painter.pipeline

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    painter.pipeline = spy
    composed = CreativeStudio(cfg).render(product("MH01-Black"), "300x250", style="gradient")
    painted = CreativeStudio(cfg, painter=painter).render(product("MH01-Black"), "300x250", style="diffusion")
    (call,) = calls
    assert call["image"].size == call["mask_image"].size == (64, 56) and call["num_inference_steps"] == 2
    assert "hoodie" in call["prompt"] or "sweatshirt" in call["prompt"]
    mask = np.asarray(call["mask_image"].resize((300, 250), Image.NEAREST)) > 0
    keep = np.asarray(painted.product_mask) == 255
    assert not mask[keep].any()  # the product is never repainted
    assert mask[~(np.asarray(painted.product_mask) > 0)].mean() > 0.9  # the scene is
    a, b = np.asarray(painted.image).astype(int), np.asarray(composed.image).astype(int)
    assert (a[keep] == b[keep]).all()  # the product's pixels, exactly
    text_or_product = np.asarray(painted.product_mask) > 0
    for e in painted.elements:
        x0, y0, x1, y1 = e["layout_box"]
        text_or_product[y0:y1, x0:x1] = True
    assert np.abs(a - b).max(axis=2)[~text_or_product].mean() > 10  # the scene was repainted
    assert painted.checks["layout"]["passed"] and painted.checks["legibility"]["passed"]


@pytest.mark.gpu
def test_diffusion_with_real_weights_on_gpu(cfg):
    """A real inpainting model (MMRAY_DIFFUSION_WEIGHTS: a save_pretrained folder) on CUDA."""
    torch = pytest.importorskip("torch")
    weights = os.environ.get("MMRAY_DIFFUSION_WEIGHTS")
    if not torch.cuda.is_available() or not weights:
        pytest.skip("needs a CUDA GPU and MMRAY_DIFFUSION_WEIGHTS")
    from mmray.creative.diffusion import DiffusionPainter

    painter = DiffusionPainter.load(DiffusionConfig(weights=weights, steps=20))
    c = CreativeStudio(cfg, painter=painter).render(product("MH01-Black"), "1080x1080", style="diffusion")
    assert c.image.size == (1080, 1080) and c.checks["layout"]["passed"] and c.checks["legibility"]["passed"]


# --------------------------------------------------------------------------- route and job


@pytest.fixture(scope="module")
def small_app(tmp_path_factory, ray_session):
    """~12 Luma rows preprocessed at 64 px, an untrained tiny model, an index, the Serve app on loopback."""
    import socket

    import yaml
    from ray import serve

    from mmray.config import load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("creatives")
    rows = luma_rows(12)
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    catalog = tmp / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = {"data": {"catalog": str(catalog), "name": "luma", "image_size": 128, "holdout_fraction": 0.0,
                    "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_batch_size": 16, "embed_concurrency": 1, "embed_runtime": "torch", "query_runtime": "torch"},
           "serve": {"host": "127.0.0.1", "port": port, "ingress": {"num_cpus": 0.5}, "request_timeout_s": 60},
           "creative": {"max_formats": 4},
           "storage": {"root": str(tmp / "artifacts")}}
    cfg_path = tmp / "app.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    publish_model(ArtifactStore.from_config(cfg.storage),
                  build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    build_index(cfg)
    base = deploy_app(str(cfg_path), port, name="creatives")
    yield base, cfg, rows
    serve.shutdown()


def test_creatives_route(small_app):
    import httpx

    base, cfg, rows = small_app
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/creatives", json={"product_id": "MH01", "formats": ["1200x628", "300x250"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["product_id"] == "MH01" and body["item_id"].startswith("MH01")
        assert body["copy"]["text"] == "Chaz Kangeroo Hoodie" and body["copy"]["source"] == "catalog"
        assert [c["format"] for c in body["creatives"]] == ["1200x628", "300x250"]
        for c in body["creatives"]:
            assert set(c["checks"]) >= {"product", "layout", "legibility", "aspect", "copy"}
            assert isinstance(c["checks"]["product"]["similarity"], float)
            assert c["passed"] == all(v["passed"] for v in c["checks"].values())
            img = client.get(c["url"])
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(img.content)).size == (c["width"], c["height"])
        assert (body["creatives"][0]["width"], body["creatives"][0]["height"]) == (1200, 628)

        def error(payload, status, code):
            r = client.post("/v1/creatives", json=payload)
            assert r.status_code == status, r.text
            assert r.json()["error"]["code"] == code, r.text

        error({"product_id": "NO-SUCH-PRODUCT", "formats": ["1200x628"]}, 404, "not_found")
        error({"product_id": "MH01", "formats": ["billboard"]}, 422, "unknown_format")
        error({"product_id": "MH01", "formats": ["20000x20000"]}, 422, "size_too_large")
        error({"product_id": "MH01", "formats": ["1200x628"] * 5}, 422, "too_many_formats")
        error({"product_id": "MH01", "formats": ["1200x628"], "style": "neon"}, 422, "unknown_style")
        error({"product_id": "MH01", "formats": []}, 422, "invalid_request")
        error({"product_id": "MH01", "formats": ["1200x628"], "size": 3}, 422, "invalid_request")
        assert client.get("/v1/creatives/x-0000000000/v20260101-000000-000-abcdef/1200x628.png").status_code == 404
        assert client.get(body["creatives"][0]["url"].replace(".png", ".jpg")).status_code == 404


def test_generate_creatives_job(small_app):
    from mmray.creative.batch import generate_creatives
    from mmray.creative.publish import BATCH_KIND
    from mmray.storage import ArtifactStore

    _, cfg, rows = small_app
    manifest = generate_creatives(cfg, ["1080x1080", "300x250"], limit=2)
    assert manifest["summary"]["products"] == 2 and manifest["summary"]["creatives"] == 4
    version = ArtifactStore.from_config(cfg.storage).resolve(BATCH_KIND)
    records = version.read_json("creatives.json")["creatives"]
    assert len({r["product_id"] for r in records}) == 2
    assert [r["format"] for r in records] == ["1080x1080", "300x250"] * 2
    for r in records:
        im = Image.open(io.BytesIO(version.read_bytes(r["file"])))
        assert im.size == (r["width"], r["height"]) == tuple(int(v) for v in r["format"].split("x"))
        assert r["checks"]["layout"]["passed"] and "similarity" in r["checks"]["product"]
    assert len(version.read_bytes("manifest.jsonl").decode().splitlines()) == 4
