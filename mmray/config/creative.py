"""Settings of the CreativeStudio: channel formats, layout, legibility and product checks, diffusion."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mmray.config.base import StrictConfig


class FormatConfig(StrictConfig):
    """One channel format: its size and the margins the channel's own UI may cover."""

    width: int = Field(..., ge=64, le=4096)
    """Width in pixels."""
    height: int = Field(..., ge=64, le=4096)
    """Height in pixels."""
    channel: str = ""
    """Where the format is used (documentation, shown in the manifest)."""
    safe_top: float = Field(0.04, ge=0.0, lt=0.5)
    """Top margin kept free of product and text, as a fraction of the height."""
    safe_bottom: float = Field(0.04, ge=0.0, lt=0.5)
    """Bottom margin kept free of product and text, as a fraction of the height."""
    safe_x: float = Field(0.04, ge=0.0, lt=0.5)
    """Left and right margins kept free of product and text, as a fraction of the width."""


def _default_formats() -> dict[str, FormatConfig]:
    return {
        "1200x628": FormatConfig(width=1200, height=628, channel="link ads (Facebook, LinkedIn), Google display"),
        "1080x1080": FormatConfig(width=1080, height=1080, channel="square feed posts"),
        # Stories/Reels: the top ~14 % (profile bar) and the bottom ~20 % (reply box, CTA sticker) are covered.
        "1080x1920": FormatConfig(width=1080, height=1920, channel="stories and reels", safe_top=0.14,
                                  safe_bottom=0.20, safe_x=0.06),
        "300x250": FormatConfig(width=300, height=250, channel="IAB medium rectangle", safe_top=0.03,
                                safe_bottom=0.03, safe_x=0.03),
    }


def _default_palettes() -> dict[str, list[str]]:
    return {"Men": ["#e8edf3", "#b9c7d8"], "Women": ["#f8ebe6", "#e6c3b8"], "Gear": ["#e9f1ea", "#bcd3c0"],
            "Training": ["#f4efe1", "#dccfa6"], "": ["#f1f1f4", "#cfd2dc"]}


class DiffusionConfig(StrictConfig):
    """The GPU backend: a diffusers inpainting pipeline paints the scene around the kept product pixels."""

    weights: str | None = None
    """The pipeline folder (diffusers `save_pretrained` layout): a local or mounted path, or an
    `s3://` / `gs://` prefix copied once into the local cache. None: the diffusion style is refused."""
    device: str = "cuda"
    """Torch device of the pipeline."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Weights dtype (float32 on CPU)."""
    steps: int = Field(30, ge=1, le=200)
    """Denoising steps."""
    guidance_scale: float = Field(7.0, ge=0.0, le=30.0)
    """Classifier-free guidance."""
    strength: float = Field(0.99, gt=0.0, le=1.0)
    """How far the scene may move from the composed background (1: fully repainted)."""
    work_side: int = Field(768, ge=64, le=2048)
    """Longest side the pipeline runs at (a multiple of 8 is used); the result is resized to the format."""
    prompt: str = "a {category} product photo on a tidy {color} studio set, soft light, shallow depth of field"
    """Scene prompt; {title}, {category}, {color} are filled from the product."""
    negative_prompt: str = "text, watermark, logo, people, clutter, low quality"
    """What the scene must not show."""
    seed: int = 0
    """Generator seed (one creative per seed is reproducible)."""


class CreativeConfig(StrictConfig):
    """Product banners and ad creatives composed from catalog photos (`mmray.creative`)."""

    formats: dict[str, FormatConfig] = Field(default_factory=_default_formats)
    """Named channel formats; requests name them (`1200x628`)."""
    allow_custom_sizes: bool = True
    """Accept `WxH` formats not in `formats` (with default margins), within `min_side`..`max_side`."""
    min_side: int = Field(120, ge=64)
    """Smallest side of a custom format."""
    max_side: int = Field(2048, ge=64, le=4096)
    """Largest side of a custom format; bigger requests get 422 `size_too_large`."""
    max_pixels: int = Field(2_500_000, ge=4096)
    """Largest custom format by area (width x height)."""
    max_formats: int = Field(8, ge=1, le=32)
    """Formats one request may ask for."""
    style: Literal["gradient", "pattern", "palette", "diffusion"] = "gradient"
    """Default background: gradient of the product's colours, a pattern of them, the category's
    palette, or a diffusion-painted scene (GPU, `diffusion.weights`)."""
    palettes: dict[str, list[str]] = Field(default_factory=_default_palettes)
    """Background colours (two hex colours, light to dark) by top-level category; "" is the fallback."""
    cta: str = "Shop now"
    """Call to action on the button."""
    price_format: str = "${price:.2f}"
    """How a price is written (Python format with `price`)."""
    mask_threshold: int = Field(28, ge=1, le=255)
    """Colour distance from the backdrop above which a packshot pixel is product (`foreground_mask`)."""
    product_share: float = Field(0.9, gt=0.2, le=1.0)
    """Largest share of its layout box the product may fill."""
    max_upscale: float = Field(4.0, ge=1.0, le=16.0)
    """Largest enlargement of the catalog photo (small photos stay smaller rather than blur further)."""
    font_bold: str | None = None
    """Font file of every text (headline, price, button). None: DejaVu Sans Bold as shipped in the
    matplotlib wheel, else the system's (Debian fonts-dejavu-core)."""
    min_font_px: int = Field(12, ge=6, le=64)
    """Smallest text size; a headline that does not fit at it is cut with an ellipsis."""
    headline_max_lines: int = Field(3, ge=1, le=8)
    """Lines a headline may wrap to."""
    min_contrast: float = Field(4.5, ge=1.0, le=21.0)
    """WCAG contrast ratio every text must reach against the pixels behind it (AA normal text: 4.5)."""
    min_similarity: float = Field(0.9, ge=-1.0, le=1.0)
    """Cosine similarity (served model's image embedding) between the creative's product region and
    the catalog photo below which a creative fails its product check."""
    image_format: Literal["PNG", "JPEG"] = "PNG"
    """Encoding of stored creatives."""
    jpeg_quality: int = Field(90, ge=50, le=100)
    """Quality when `image_format` is JPEG."""
    diffusion: DiffusionConfig = DiffusionConfig()
    """GPU backend."""

    @model_validator(mode="after")
    def _check(self) -> CreativeConfig:
        for name in self.formats:  # format names become file names of the stored creatives
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
                raise ValueError(f"formats: name {name!r} must be letters, digits, '_' or '-' (e.g. 1200x628)")
        if "" not in self.palettes:
            raise ValueError('palettes needs a fallback entry "" (used for categories it does not name)')
        for name, colours in self.palettes.items():
            if len(colours) != 2:
                raise ValueError(f"palettes[{name!r}]: needs exactly two hex colours")
        return self
