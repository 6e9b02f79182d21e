"""The CLIP-style dual encoder: two towers, linear projection heads, temperature.

Built by `mmray.model.factory.build_model` (the towers are chosen there); saved and rebuilt by
`mmray.model.checkpoint`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmray.config import ModelConfig
from mmray.model.towers import load_tokenizer
from mmray.model.transforms import image_transform


class DualEncoder(nn.Module):
    """Image and text towers + linear projections into one L2-normalised space.

    The projections are drawn from `generator` (nn.Linear's default init), never from the
    global RNG: the same generator state gives the same heads in every process."""

    def __init__(self, cfg: ModelConfig, image_tower: nn.Module, text_tower: nn.Module,
                 generator: torch.Generator):
        super().__init__()
        self.cfg = cfg
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_proj = _linear(image_tower.out_dim, cfg.embed_dim, generator)
        self.text_proj = _linear(text_tower.out_dim, cfg.embed_dim, generator)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # used by the SigLIP loss only
        # A tower with its own vocabulary (the multilingual one) tokenizes for itself.
        self.tokenizer = None if hasattr(text_tower, "tokenize") else load_tokenizer()

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
        if self.tokenizer is None:
            return self.text_tower.tokenize(texts, max_tokens or self.cfg.max_text_tokens)
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
        return image_transform(self.image_size, self.image_tower.mean, self.image_tower.std, train)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size or getattr(self.image_tower, "input_size", 224)


def _linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """Bias-free Linear with nn.Linear's default weight init, drawn from `generator`."""
    layer = torch.nn.utils.skip_init(nn.Linear, d_in, d_out, bias=False)  # no draw from the global RNG
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    return layer
