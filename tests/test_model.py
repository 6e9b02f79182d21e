"""build_model (tiny, lite, open_clip), encoders, checkpoints and the EfficientNet-Lite0 weight mapping."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from mmray.config import ModelConfig
from mmray.model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from mmray.model.dual_encoder import CONFIG_FILE, WEIGHTS_FILE, trainable_state

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


def test_lite0_position_mapping_loads_every_tensor():
    import timm

    from mmray.model.towers import _lite0_state_dict, efficientnet_lite0_weights

    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    mapped = _lite0_state_dict(net)
    assert list(mapped) == list(net.state_dict())
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # by position, every tensor's role lines up: same kind (weight/bias/BN stat), conv <-> conv, bn <-> bn
    source = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    src = [k for k in source if not k.startswith("_fc.")]
    for sk, tk in zip(src, mapped):
        assert sk.rsplit(".", 1)[1] == tk.rsplit(".", 1)[1], (sk, tk)
        assert ("conv" in sk.rsplit(".", 2)[-2]) == ("conv" in tk.rsplit(".", 2)[-2]), (sk, tk)
        torch.testing.assert_close(net.state_dict()[tk], source[sk], rtol=0, atol=0)


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
