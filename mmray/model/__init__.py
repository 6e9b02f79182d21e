"""Dual-encoder models: `build_model(cfg)`, checkpoints, towers."""
from mmray.model.dual_encoder import CheckpointError, DualEncoder, build_model, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "DualEncoder", "build_model", "load_checkpoint", "save_checkpoint"]
