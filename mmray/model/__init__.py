"""Dual-encoder models: `build_model(cfg)`, checkpoints, towers, image transforms."""
from mmray.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mmray.model.dual_encoder import DualEncoder
from mmray.model.factory import build_model, unwrap_model

__all__ = ["CheckpointError", "DualEncoder", "build_model", "load_checkpoint", "save_checkpoint", "unwrap_model"]
