"""Any open_clip model behind the DualEncoder interface (production configs).

`model.open_clip_model` names the architecture (or `hf-hub:org/repo`), `model.open_clip_pretrained`
a pretrained tag or a local checkpoint path. Weights download only when a tag or hub id asks
for it; a local path works offline.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmray.config import ModelConfig
from mmray.model.transforms import image_transform


class OpenClipEncoder(nn.Module):
    """open_clip model with encode_image / encode_text; both towers train end to end."""

    image_cacheable = False
    text_cacheable = False

    def __init__(self, cfg: ModelConfig, pretrained: bool = True):
        super().__init__()
        import open_clip

        self.cfg = cfg
        if cfg.open_clip_config:
            open_clip.add_model_config(cfg.open_clip_config)
        self.model = open_clip.create_model(cfg.open_clip_model,
                                            pretrained=cfg.open_clip_pretrained if pretrained else None)
        self.logit_scale = self.model.logit_scale
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self._tokenizer = open_clip.get_tokenizer(cfg.open_clip_model)
        pcfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        size = getattr(self.model.visual, "image_size", None) or cfg.image_size or 224
        self.input_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode_text(input_ids, normalize=False)

    def project_image(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats, dim=-1)

    project_text = project_image

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_features(pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project_text(self.text_features(input_ids))

    def tokenize(self, texts: Sequence[str], max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        ids = self._tokenizer(list(texts))
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def image_transform(self, train: bool = False):
        return image_transform(self.input_size, self.mean, self.std, train)
