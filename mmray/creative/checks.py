"""Checks every creative carries: the product is still the catalog's product (image similarity of
its region to the catalog photo), every text is legible (contrast against the pixels behind it,
size), nothing leaves its box or the channel's safe area, the product keeps its aspect ratio."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from mmray.creative.layout import Box

Embed = Callable[[Sequence[Image.Image]], np.ndarray]
"""Images -> one vector per image (the served dual encoder's image embedding)."""


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def product_region(image: Image.Image, box: Box, mask: Image.Image | None = None,
                   backdrop: tuple[int, int, int] = (255, 255, 255), margin: float = 0.04) -> Image.Image:
    """The creative's product as the catalog shows it: its box (grown by `margin`), and with the
    placement `mask` (L, the creative's size) everything but the product's own pixels set to the
    catalog photo's `backdrop`, so the scene around it does not count for or against it."""
    mx, my = round(box.w * margin), round(box.h * margin)
    crop = (max(0, box.x0 - mx), max(0, box.y0 - my), min(image.width, box.x1 + mx), min(image.height, box.y1 + my))
    region = image.convert("RGB").crop(crop)
    if mask is None:
        return region
    return Image.composite(region, Image.new("RGB", region.size, backdrop), mask.crop(crop))


def similarity_check(region_vector: np.ndarray, reference_vector: np.ndarray, threshold: float) -> dict:
    sim = cosine(region_vector, reference_vector)
    return {"similarity": round(sim, 4), "threshold": threshold, "passed": bool(sim >= threshold)}


def legibility_check(elements: list[dict], min_contrast: float, min_size: int) -> dict:
    texts = [{"role": e["role"], "contrast": round(e["contrast"], 2), "size_px": e["size_px"],
              "passed": bool(e["contrast"] >= min_contrast and e["size_px"] >= min_size)} for e in elements]
    return {"min_contrast": min_contrast, "min_size_px": min_size, "texts": texts,
            "passed": all(t["passed"] for t in texts)}


def layout_check(size: tuple[int, int], safe: Box, product: Box, elements: list[dict]) -> dict:
    """Text inside its own box (no overflow), everything inside the safe area, no text on the product."""
    problems = []
    if not safe.contains(product):
        problems.append(f"product {product.as_list()} leaves the safe area {safe.as_list()}")
    for e in elements:
        ink, room = Box(*e["box"]), Box(*e["layout_box"])
        if not room.contains(ink):
            problems.append(f"{e['role']} {ink.as_list()} overflows its box {room.as_list()}")
        if not safe.contains(ink):
            problems.append(f"{e['role']} {ink.as_list()} leaves the safe area {safe.as_list()}")
        if ink.overlaps(product):
            problems.append(f"{e['role']} overlaps the product")
    truncated = [e["role"] for e in elements if e.get("truncated")]
    return {"size": list(size), "safe_area": safe.as_list(), "problems": problems, "truncated": truncated,
            "passed": not problems}


def aspect_check(source: tuple[int, int], placed: Box) -> dict:
    """The placed product's width/height equals the cut-out's, up to one pixel of rounding."""
    src, dst = source[0] / source[1], placed.w / placed.h
    tolerance = src * (1 / placed.w + 1 / placed.h)
    return {"source": round(src, 4), "placed": round(dst, 4), "passed": bool(abs(src - dst) <= tolerance)}
