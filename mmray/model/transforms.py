"""Image preprocessing shared by every model: PIL image -> normalised tensor (3, S, S)."""
from __future__ import annotations

import torch
from PIL import Image
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
