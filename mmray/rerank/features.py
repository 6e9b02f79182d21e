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


class _TokenStates(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return text_tokens(self.model, input_ids, attention_mask)[0]


class QueryEncoder:
    """The reranker's query side (projected token states, `query_tokens`) on ONNX Runtime: exported
    from the model once per process, checked against torch on probe texts (max |diff| <=
    `onnx_runtime.FP32_TOLERANCE`), torch where the export or the check fails."""

    def __init__(self, model, runtime: str = "onnx"):
        self.model = unwrap_model(model).eval()
        self.runtime, self._session = "torch", None
        if runtime == "torch" or not hasattr(self.model.text_tower, "embed") and not hasattr(
                getattr(self.model.text_tower, "net", None), "encoder"):
            return
        try:
            self._session = self._export()
            self.runtime = "onnx"
        except Exception as e:  # noqa: BLE001 - any export/check failure: torch, with the reason logged
            import logging

            logging.getLogger(__name__).warning("reranker query tokens stay on torch: %s", e)

    def _export(self):
        import io
        import warnings

        from mmray.model.onnx_runtime import FP32_TOLERANCE, session, text_probes

        module = _TokenStates(self.model).eval()
        probes = text_probes(self.model)
        buf = io.BytesIO()
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "tokens": {0: "batch", 1: "tokens"}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (probes[0]["input_ids"], probes[0]["attention_mask"]), buf,
                              input_names=["input_ids", "attention_mask"], output_names=["tokens"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        sess = session(buf.getvalue())
        wanted = {i.name for i in sess.get_inputs()}
        for probe in probes:
            with torch.no_grad():
                expected = module(probe["input_ids"], probe["attention_mask"])
            got = sess.run(None, {k: v.numpy() for k, v in probe.items() if k in wanted})[0]
            mask = probe["attention_mask"].bool().numpy()
            diff = float(np.abs(got - expected.numpy())[mask].max())
            if not diff <= FP32_TOLERANCE:
                raise RuntimeError(f"ONNX token states differ from torch by {diff:.2g}")
        self._wanted = wanted
        return sess

    @torch.no_grad()
    def __call__(self, texts: list[str], max_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._session is None:
            return query_tokens(self.model, texts, max_tokens)
        tok = self.model.tokenize(list(texts), max_tokens)
        out = self._session.run(None, {k: v.numpy() for k, v in tok.items() if k in self._wanted})[0]
        return torch.from_numpy(out), tok["attention_mask"].bool()
