"""Image preprocessing shared by every model: PIL image -> normalised tensor (3, S, S)."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2 as T


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


def foreground_mask(image: Image.Image, threshold: int = 28) -> Image.Image:
    """An L mask of the product in a packshot: 255 where a pixel's colour differs from the median
    colour of the image border (the studio backdrop) by more than `threshold` in some channel,
    opened and closed with a 5 px filter so specks and pinholes go. A photo without a plain
    backdrop comes out mostly foreground, which is harmless for `in_scene`."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    distance = np.abs(a - np.median(border, axis=0)).max(axis=2)
    mask = Image.fromarray(((distance > threshold) * 255).astype(np.uint8))
    return mask.filter(ImageFilter.MinFilter(5)).filter(ImageFilter.MaxFilter(5))


def in_scene(product: Image.Image, background: Image.Image, rng: random.Random) -> Image.Image:
    """`product` cut from its backdrop and placed into a crop of `background` (another catalog
    photo: the other things a shopper's photo shows), at 50-85 % of the frame, anywhere in it,
    turned by up to 10 degrees. Training augmentation for search by shopper photos; the size of
    the result is the product image's."""
    size = product.size
    cut = product.convert("RGBA")
    cut.putalpha(foreground_mask(product))
    cut = cut.rotate(rng.uniform(-10, 10), expand=True, resample=Image.BICUBIC)
    bw, bh = background.size
    side = int(min(bw, bh) * rng.uniform(0.4, 1.0))
    x0, y0 = rng.randint(0, bw - side), rng.randint(0, bh - side)
    scene = background.convert("RGB").crop((x0, y0, x0 + side, y0 + side)).resize(size, Image.BICUBIC)
    scale = rng.uniform(0.5, 0.85) * min(size) / max(cut.size)
    cut = cut.resize((max(1, int(cut.width * scale)), max(1, int(cut.height * scale))), Image.BICUBIC)
    scene.paste(cut, (rng.randint(0, size[0] - cut.width), rng.randint(0, size[1] - cut.height)), cut)
    return scene
