"""Backgrounds for creatives: a gradient or a pattern in tints of the product's own colours, or the
category's palette. Tints are light behind a dark or mid product and deep behind a light one, so
the product stands out."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmray.creative.cutout import main_color
from mmray.creative.text import relative_luminance

RGB = tuple[int, int, int]


def hex_rgb(value: str) -> RGB:
    v = value.lstrip("#")
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """(1 - t) * a + t * b."""
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))

def tints(colors: list[tuple[RGB, float]]) -> tuple[RGB, RGB]:
    """Two background colours (start, end) from the product's dominant colours."""
    hue = main_color(colors)
    product_lum = sum(float(relative_luminance(c)) * s for c, s in colors) / max(sum(s for _, s in colors), 1e-9)
    if product_lum > 0.45:  # a light product: a deep backdrop
        return mix(hue, (20, 24, 32), 0.55), mix(hue, (10, 12, 18), 0.78)
    return mix(hue, (255, 255, 255), 0.85), mix(hue, (255, 255, 255), 0.58)

def palette_for(category: str | None, palettes: dict[str, list[str]]) -> tuple[RGB, RGB]:
    top = (category or "").split("/")[0]
    start, end = palettes.get(top, palettes[""])
    return hex_rgb(start), hex_rgb(end)

def gradient(size: tuple[int, int], start: RGB, end: RGB, angle_deg: float = 35.0) -> Image.Image:
    """A linear gradient from `start` (top left) to `end` (bottom right) at `angle_deg`."""
    w, h = size
    theta = np.deg2rad(angle_deg)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    a, b = np.array(start, np.float32), np.array(end, np.float32)
    img = a + (b - a) * t[..., None]
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")

def pattern(size: tuple[int, int], start: RGB, end: RGB) -> Image.Image:
    """The gradient with a grid of soft dots in a slightly stronger tint of its own colours."""
    base = gradient(size, start, end)
    w, h = size
    step = max(12, min(w, h) // 14)
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    r = max(2, step // 7)
    for row, y in enumerate(range(step // 2, h + step, step)):
        for x in range((row % 2) * step // 2, w + step, step):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=70)
    dark = float(relative_luminance(start)) < 0.3
    ink = Image.new("RGB", size, mix(end, (255, 255, 255) if dark else (0, 0, 0), 0.25))
    return Image.composite(ink, base, layer.filter(ImageFilter.GaussianBlur(0.6)))

def drop_shadow(canvas: Image.Image, box: tuple[int, int, int, int], strength: float = 0.28) -> Image.Image:
    """A soft elliptical floor shadow under a product placed in `box`."""
    x0, y0, x1, y1 = box
    w = x1 - x0
    shadow = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(shadow).ellipse((x0 + 0.1 * w, y1 - 0.035 * w, x1 - 0.1 * w, y1 + 0.035 * w),
                                   fill=int(255 * strength))
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(2, w // 25)))
    return Image.composite(Image.new("RGB", canvas.size, (0, 0, 0)), canvas, shadow)
