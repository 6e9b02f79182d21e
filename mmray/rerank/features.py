"""Token- and region-level features from the dual encoder's own towers, in its shared space.

Both towers pool linearly before their (linear) projection heads: EfficientNet-Lite averages its last
feature map, MiniLM and the tiny text tower average their token states. So projecting each region
(each token) with the trained head gives vectors whose mean *is* the bi-encoder's embedding before
normalisation: region and token features live in the space the model was trained in.

Item side (`item_features`, once per index build, stored fp16 in `rerank_features.npz` beside the index):
  regions (N, G, E)  the first image's last feature map (G = h*w, e.g. 7x7 = 49 for Lite0), projected
  tokens  (N, T, E)  the item text's first `item_tokens` token states, projected; `token_mask` (N, T)
  has_image (N,)     False for a text-only item (its regions are zero)
Query side (`query_tokens`, per request): the query's token states, projected, and their mask.

A text tower without token states (the multilingual USE tower) gives one "token": its pooled feature.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from mmray.model import unwrap_model

FEATURES_FILE = "rerank_features.npz"


def _image_map(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, C, h, w): the image tower's last feature map, before its pooling."""
    tower = model.image_tower
    net = tower.net
    if hasattr(net, "forward_features"):  # timm EfficientNet-Lite: forward_head pools this map
        return net.forward_features(pixels)
    if isinstance(net, torch.nn.Sequential):  # the tiny CNN: everything before AdaptiveAvgPool2d + Flatten
        return net[:-2](pixels)
    raise TypeError(f"image tower {type(tower).__name__} has no feature map the reranker can read")


def image_regions(model, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, G, E) projected region features (not normalised) and the grid (h, w)."""
    fmap = _image_map(model, pixels)
    b, c, h, w = fmap.shape
    regions = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
    return model.image_proj(regions), (h, w)


def text_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, E) projected token states (not normalised) and the (B, T) bool mask."""
    tower = model.text_tower
    if hasattr(tower, "embed"):  # TinyTextTower: mean of token embeddings
        states = tower.embed(input_ids)
    elif hasattr(tower, "net") and hasattr(tower.net, "encoder"):  # MiniLM: mean of last hidden states
        states = tower.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    else:  # no token states: the pooled feature is the only token
        return model.text_proj(tower(input_ids, attention_mask)).unsqueeze(1), torch.ones(len(input_ids), 1, dtype=torch.bool)
    return model.text_proj(states), attention_mask.bool()


@dataclass
class ItemFeatures:
    """Item-side reranker features of one index (row order = the index's rows)."""

    regions: np.ndarray     # (N, G, E) float16
    tokens: np.ndarray      # (N, T, E) float16
    token_mask: np.ndarray  # (N, T) bool
    has_image: np.ndarray   # (N,) bool
    grid: tuple[int, int]

    def __len__(self) -> int:
        return len(self.regions)

    def take(self, rows) -> dict[str, torch.Tensor]:
        """Float32 tensors of `rows`, as the heads take them."""
        rows = np.asarray(rows, dtype=np.int64)
        return {"regions": torch.from_numpy(self.regions[rows].astype(np.float32, copy=False)),
                "tokens": torch.from_numpy(self.tokens[rows].astype(np.float32, copy=False)),
                "token_mask": torch.from_numpy(self.token_mask[rows]),
                "has_image": torch.from_numpy(self.has_image[rows])}

    def save(self, folder: str) -> str:
        path = os.path.join(folder, FEATURES_FILE)
        np.savez(path, regions=self.regions, tokens=self.tokens, token_mask=self.token_mask,
                 has_image=self.has_image, grid=np.array(self.grid, dtype=np.int64))
        return FEATURES_FILE

    @classmethod
    def load(cls, folder: str) -> ItemFeatures:
        with np.load(os.path.join(folder, FEATURES_FILE)) as z:
            return cls(z["regions"], z["tokens"], z["token_mask"], z["has_image"], tuple(int(v) for v in z["grid"]))

    def as_float32(self) -> ItemFeatures:
        """A float32 copy (training gathers from it many times)."""
        return ItemFeatures(self.regions.astype(np.float32), self.tokens.astype(np.float32), self.token_mask,
                            self.has_image, self.grid)


@torch.no_grad()
def item_features(embedder, texts: list[str], first_images: list[bytes], item_tokens: int) -> ItemFeatures:
    """Features of items from their product text and first image (b"" for a text-only item)."""
    model = unwrap_model(embedder.model).eval()
    n = len(texts)
    tok = model.tokenize(list(texts), item_tokens)
    tokens, mask = text_tokens(model, tok["input_ids"], tok["attention_mask"])
    has_image = np.array([len(im) > 0 for im in first_images], dtype=bool)
    probe = embedder.pixels([im for im in first_images if len(im)][:1]) if has_image.any() else None
    if probe is None:  # no image at all: the grid of a blank input
        size = model.image_size
        probe = torch.zeros(1, 3, size, size)
    _, grid = image_regions(model, probe[:1])
    regions = torch.zeros(n, grid[0] * grid[1], tokens.shape[-1])
    idx = np.flatnonzero(has_image)
    if len(idx):
        regions[torch.from_numpy(idx)] = image_regions(model, embedder.pixels([first_images[i] for i in idx]))[0]
    return ItemFeatures(regions.numpy().astype(np.float16), tokens.numpy().astype(np.float16),
                        mask.numpy(), has_image, grid)


@torch.no_grad()
def query_tokens(model, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, E) projected query token states and their (B, T) mask."""
    model = unwrap_model(model)
    tok = model.tokenize(list(texts), max_tokens)
    return text_tokens(model, tok["input_ids"], tok["attention_mask"])
