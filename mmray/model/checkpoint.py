"""Checkpoint folders: trained weights beside the model config, so a folder rebuilds its model.

Locked towers are not saved (they come from the packaged weights); everything that trains is.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
import yaml
from torch import nn

from mmray.config import ModelConfig
from mmray.model.factory import build_model, unwrap_model

WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "weights.pt", "model_config.yaml", "metrics.json"


class CheckpointError(Exception):
    """A checkpoint folder that is missing files or does not fit its model."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train, plus buffers of modules that train (BatchNorm stats of unlocked blocks)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    prefixes = {n.rsplit(".", 1)[0] for n in names}
    state = model.state_dict()
    return {k: v.detach().clone() for k, v in state.items()
            if k in names or k.rsplit(".", 1)[0] in prefixes}


def save_checkpoint(model: nn.Module, folder: str, metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write weights (trainable part), model config and metrics into `folder`."""
    model = unwrap_model(model)
    os.makedirs(folder, exist_ok=True)
    torch.save({"state": trainable_state(model), **(extra or {})}, os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        yaml.safe_dump(model.cfg.model_dump(mode="json"), f, sort_keys=False)
    if metrics is not None:
        with open(os.path.join(folder, METRICS_FILE), "w") as f:
            json.dump(metrics, f, indent=2, default=float)


def load_checkpoint(folder: str, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from `folder`'s own config and load its weights; returns (model, extra).
    Leaves the caller's RNG state alone (see `build_model`)."""
    cfg_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    for path in (cfg_path, weights_path):
        if not os.path.exists(path):
            raise CheckpointError(f"not a model checkpoint: {path} is missing")
    with open(cfg_path) as f:
        raw = yaml.safe_load(f)
    if raw.get("kind", "lite") == "lite" and "image_tower" not in raw:
        # Written before the image tower was loaded into timm's tf_ variant: its trained heads fit
        # features that today's tower no longer produces, so serving it would quietly mis-rank.
        raise CheckpointError(f"checkpoint {folder} predates model.image_tower (its EfficientNet-Lite "
                              "features differ from today's); retrain it with `python -m jobs.train`")
    cfg = ModelConfig.model_validate(raw)
    model = build_model(cfg)
    payload = torch.load(weights_path, map_location=map_location, weights_only=True)
    missing = set(trainable_state(model)) - set(payload["state"])
    if missing:
        raise CheckpointError(f"checkpoint {folder} lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(payload["state"], strict=False)
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state"}
