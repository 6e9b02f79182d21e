"""The Embedder: text and images -> unit vectors, in batches, with a model loaded from its checkpoint.

One class for every place that embeds: evaluation, the Ray Data index build (`map_batches`
with an actor pool) and the Serve replica. It works at two levels: tower features (cacheable
for locked towers) and projected embeddings.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmray.config import IndexConfig
from mmray.images import to_rgb
from mmray.model import unwrap_model

_BATCH = IndexConfig().embed_batch_size


class Embedder:
    """Batch text/image embedding with one model in eval mode, no gradients."""

    def __init__(self, model: torch.nn.Module, batch_size: int = _BATCH, text_max_tokens: int | None = None,
                 runtime: str = "torch", store=None, model_ref: str | None = None,
                 calibration: np.ndarray | None = None):
        """`runtime`: `torch`, or `onnx` / `onnx-int8` (both towers on ONNX Runtime where they export
        and agree with torch, `mmray.model.onnx_runtime`; cached in `store` next to `model_ref`)."""
        self.model = unwrap_model(model).eval()  # callers that train restore their mode
        self.batch_size = batch_size
        self.text_max_tokens = text_max_tokens
        self.transform = self.model.image_transform(train=False)
        self._text_features, self._image_features = self.model.text_features, self.model.image_features
        self.text_runtime = self.image_runtime = "torch"
        self.compiled_from = ""
        if runtime != "torch":
            from mmray.model.onnx_runtime import compile_towers

            compiled = compile_towers(self.model, runtime, store, model_ref, calibration)
            if compiled.text is not None:
                self._text_features, self.text_runtime = compiled.text, compiled.runtimes["text"]
            if compiled.image is not None:
                self._image_features, self.image_runtime = compiled.image, compiled.runtimes["image"]
            self.compiled_from = compiled.source

    @classmethod
    def from_checkpoint(cls, folder: str, batch_size: int = _BATCH, runtime: str = "torch") -> "Embedder":
        from mmray.model import load_checkpoint

        return cls(load_checkpoint(folder)[0], batch_size, runtime=runtime)

    @classmethod
    def from_version(cls, version, batch_size: int = _BATCH, runtime: str = "torch",
                     calibration: np.ndarray | None = None) -> "Embedder":
        """The model of a published `models/...` version; its ONNX towers cached beside it in the same store."""
        from mmray.model import load_checkpoint

        return cls(load_checkpoint(version.local_dir())[0], batch_size, runtime=runtime, store=version.store,
                   model_ref=version.ref, calibration=calibration)

    def pixels(self, images: Sequence[Image.Image | bytes]) -> torch.Tensor:
        """(N, 3, S, S) model inputs of `images` (the eval transform)."""
        return torch.stack([self.transform(_as_image(im)) for im in images])

    # ---- tower features
    @torch.no_grad()
    def text_features(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.model.tokenize(texts[i:i + self.batch_size], max_tokens or self.text_max_tokens)
            out.append(self._text_features(**tok).float())
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image | bytes]) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            out.append(self._image_features(self.pixels(images[i:i + self.batch_size])).float())
        return torch.cat(out) if out else torch.zeros(0, 1)

    # ---- embeddings (unit vectors, numpy float32)
    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], max_tokens: int | None = None) -> np.ndarray:
        return self.model.project_text(self.text_features(texts, max_tokens)).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        return self.model.project_image(self.image_features(images)).numpy().astype(np.float32)


def _as_image(im: Image.Image | bytes) -> Image.Image:
    if isinstance(im, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(bytes(im)))
    return to_rgb(im)


def fuse(image_vecs: np.ndarray, text_vecs: np.ndarray, image_weight: float) -> np.ndarray:
    """Item vector: normalise(w * image + (1 - w) * text); rows are items."""
    v = image_weight * image_vecs + (1.0 - image_weight) * text_vecs
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def item_image_vectors(image_vecs: np.ndarray, owner: np.ndarray, n_items: int) -> np.ndarray:
    """Mean of each item's image vectors, renormalised."""
    sums = np.zeros((n_items, image_vecs.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, image_vecs)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def pretrained_text_features(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Features of `texts` from the pretrained MiniLM text tower (mean-pooled, before any trained
    projection head), each distinct text embedded once: for measuring text similarity and for item
    vectors where no trained model exists."""
    from mmray.config import ModelConfig
    from mmray.model.factory import build_model

    model = build_model(ModelConfig(kind="lite", text_tower="minilm"), pretrained=True)
    uniq = list(dict.fromkeys(texts))
    feats = Embedder(model, batch_size=batch_size).text_features(uniq).numpy()
    at = {t: i for i, t in enumerate(uniq)}
    return feats[[at[t] for t in texts]]
