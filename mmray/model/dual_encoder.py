"""The CLIP-style dual encoder: towers, projection heads, temperature, transforms, checkpoints.

`build_model(ModelConfig)` is the only constructor; `save_checkpoint` / `load_checkpoint` keep
the model config beside the weights, so a checkpoint folder rebuilds its model by itself.
Locked towers are not saved (they come from the packaged weights); everything that trains is.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from mmray.config import ModelConfig
from mmray.model.towers import LiteImageTower, LiteTextTower, TinyImageTower, TinyTextTower, load_tokenizer

WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "weights.pt", "model_config.yaml", "metrics.json"


class DualEncoder(nn.Module):
    """Image and text towers + linear projections into one L2-normalised space."""

    def __init__(self, cfg: ModelConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_proj = nn.Linear(image_tower.out_dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(text_tower.out_dim, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # used by the SigLIP loss only
        self.tokenizer = load_tokenizer()

    def train(self, mode: bool = True):
        # A locked tower stays in eval mode (no dropout, frozen BatchNorm statistics): its
        # features must be the same in training as in the cache and at serving time.
        super().train(mode)
        for tower in (self.image_tower, self.text_tower):
            if not getattr(tower, "trainable", True):
                tower.eval()
        return self

    # ---- features (tower outputs; cacheable when the tower is locked)
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D_img)
        return self.image_tower(pixels)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_tower(input_ids, attention_mask)  # (B, D_txt)

    # ---- projection into the shared space
    def project_image(self, feats: torch.Tensor) -> torch.Tensor:  # (B, D_img) -> (B, E), unit norm
        return F.normalize(self.image_proj(feats), dim=-1)

    def project_text(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(feats), dim=-1)

    # ---- end to end
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_features(pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.text_features(input_ids, attention_mask))

    def tokenize(self, texts: Sequence[str], max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        out = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                             max_length=max_tokens or self.cfg.max_text_tokens)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    @property
    def image_cacheable(self) -> bool:
        return not getattr(self.image_tower, "trainable", True)

    @property
    def text_cacheable(self) -> bool:
        return not getattr(self.text_tower, "trainable", True)

    def image_transform(self, train: bool = False):
        return image_transform(self.cfg.image_size, self.image_tower.mean, self.image_tower.std, train)


def image_transform(size: int, mean, std, train: bool):
    """PIL image -> normalised tensor (3, size, size). Pads to square on white (keeps the whole
    product in frame); training adds a mild crop, flip and brightness/contrast jitter (never hue:
    colour words in queries must keep matching)."""
    steps = [T.Lambda(pad_to_square), T.Resize((size, size), antialias=True)]
    if train:
        steps += [T.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
                  T.RandomHorizontalFlip(), T.ColorJitter(brightness=0.15, contrast=0.15)]
    steps += [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    return T.Compose(steps)


def pad_to_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(im.convert("RGB"), ((side - w) // 2, (side - h) // 2))
    return canvas


def build_model(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """The model named by `cfg.kind`; `pretrained=False` skips loading tower weights (tests)."""
    torch.manual_seed(0)  # projections start identical on every worker and every rebuild
    if cfg.kind == "lite":
        model = DualEncoder(cfg, LiteImageTower(cfg.unlocked_image_blocks, pretrained),
                            LiteTextTower(cfg.unlocked_text_layers, pretrained))
    elif cfg.kind == "tiny":
        model = DualEncoder(cfg, TinyImageTower(), TinyTextTower())
    else:
        from mmray.model.open_clip_model import OpenClipEncoder

        model = OpenClipEncoder(cfg, pretrained)
    return model.eval()  # inference mode until a training loop says otherwise


# --------------------------------------------------------------------------- checkpoints


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train, plus buffers of modules that train (BatchNorm stats of unlocked blocks)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    prefixes = {n.rsplit(".", 1)[0] for n in names}
    state = model.state_dict()
    return {k: v.detach().clone() for k, v in state.items()
            if k in names or k.rsplit(".", 1)[0] in prefixes}


def save_checkpoint(model: nn.Module, folder: str, metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write weights (trainable part), model config and metrics into `folder`."""
    model = getattr(model, "module", model)  # unwrap DDP
    os.makedirs(folder, exist_ok=True)
    torch.save({"state": trainable_state(model), **(extra or {})}, os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        yaml.safe_dump(model.cfg.model_dump(mode="json"), f, sort_keys=False)
    if metrics is not None:
        with open(os.path.join(folder, METRICS_FILE), "w") as f:
            json.dump(metrics, f, indent=2, default=float)


class CheckpointError(Exception):
    """A checkpoint folder that is missing files or does not fit its model."""


def load_checkpoint(folder: str, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from `folder`'s own config and load its weights; returns (model, extra)."""
    cfg_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    for path in (cfg_path, weights_path):
        if not os.path.exists(path):
            raise CheckpointError(f"not a model checkpoint: {path} is missing")
    with open(cfg_path) as f:
        cfg = ModelConfig.model_validate(yaml.safe_load(f))
    model = build_model(cfg)
    payload = torch.load(weights_path, map_location=map_location, weights_only=True)
    missing = set(trainable_state(model)) - set(payload["state"])
    if missing:
        raise CheckpointError(f"checkpoint {folder} lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(payload["state"], strict=False)
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state"}
