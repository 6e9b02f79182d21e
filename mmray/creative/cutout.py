"""The product cut out of its packshot, and its colours.

The backdrop is estimated from the photo's border (`mmray.model.transforms.foreground_mask`: colour
distance from the border's median, opened and closed); enclosed holes are filled (a white collar on
a white backdrop stays product), specks far smaller than the product are dropped, and the edge is
feathered by a pixel. A photo with no plain backdrop is kept whole, as a rectangle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from mmray.model.transforms import foreground_mask


@dataclass
class Cutout:
    image: Image.Image  # RGBA, cropped to the product: alpha is the mask
    box: tuple[int, int, int, int]  # the crop in the source photo (x0, y0, x1, y1)
    backdrop: tuple[int, int, int]  # median border colour of the source photo
    cropped_at_bottom: bool  # the product runs off the photo's bottom edge (a torso shot): no floor shadow
    method: str  # "mask" or "rectangle" (no plain backdrop found)

    @property
    def aspect(self) -> float:
        return self.image.width / self.image.height


def cut_out(photo: Image.Image, threshold: int = 28) -> Cutout:
    rgb = photo.convert("RGB")
    a = np.asarray(rgb)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    backdrop = tuple(int(v) for v in np.median(border, axis=0))
    mask = np.asarray(foreground_mask(rgb, threshold)) > 0
    mask = _fill_product_holes(a, mask, backdrop)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.02 * sizes.max()))
    share = mask.mean()
    if share < 0.01 or share > 0.97:  # nothing found, or no plain backdrop: the whole photo
        full = rgb.convert("RGBA")
        return Cutout(full, (0, 0, rgb.width, rgb.height), backdrop, True, "rectangle")
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    alpha = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3))
    alpha = alpha.filter(ImageFilter.GaussianBlur(0.8))
    cut = rgb.convert("RGBA")
    cut.putalpha(alpha)
    return Cutout(cut.crop(box), box, backdrop, box[3] >= rgb.height - 1, "mask")


def _fill_product_holes(a: np.ndarray, mask: np.ndarray, backdrop, plain: float = 10.0) -> np.ndarray:
    """Fill enclosed holes that are shaded (white fabric: product) but not those of plain backdrop
    (the gap between an arm and the body: background seen through the product)."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if not n:
        return mask
    distance = np.abs(a.astype(np.int16) - np.array(backdrop, np.int16)).max(axis=2)
    medians = ndimage.median(distance, labels, index=np.arange(1, n + 1))
    return mask | np.isin(labels, 1 + np.flatnonzero(np.asarray(medians) > plain))


def main_color(colors: list[tuple[tuple[int, int, int], float]]) -> tuple[int, int, int]:
    """The colour that says most about the product: common first, vivid second (a model's skin is
    vivid but rarely the commonest)."""
    if not colors:
        return (96, 96, 96)
    return max(colors, key=lambda cs: cs[1] * (0.5 + (max(cs[0]) - min(cs[0])) / 255.0))[0]


def dominant_colors(cutout: Cutout, k: int = 4) -> list[tuple[tuple[int, int, int], float]]:
    """The product's main colours (RGB, share of its pixels), commonest first."""
    a = np.asarray(cutout.image)
    pixels = a[..., :3][a[..., 3] > 200]
    if len(pixels) == 0:
        pixels = a[..., :3].reshape(-1, 3)
    strip = Image.fromarray(pixels.reshape(1, -1, 3).astype(np.uint8))
    q = strip.quantize(colors=k, method=Image.Quantize.MEDIANCUT)
    palette = q.getpalette()[: 3 * k]
    counts = np.bincount(np.asarray(q).ravel(), minlength=k)[:k]
    total = max(int(counts.sum()), 1)
    out = [(tuple(palette[3 * i: 3 * i + 3]), counts[i] / total) for i in np.argsort(-counts) if counts[i]]
    return [(tuple(int(v) for v in c), float(s)) for c, s in out]
