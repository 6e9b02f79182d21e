"""Contrastive training settings (`jobs.train`, `jobs.tune`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmray.config.base import StrictConfig


class TrainConfig(StrictConfig):
    """Ray Train run: workers, optimisation, checkpoints."""

    num_workers: int = Field(2, ge=1)
    """Ray Train workers."""
    use_gpu: bool = False
    """Give each worker a GPU."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved by each worker."""
    epochs: int = Field(10, ge=1)
    """Passes over the training split."""
    batch_size: int = Field(128, ge=2)
    """Global batch (split evenly across workers); the loss sees the whole global batch as negatives."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches summed before each optimizer step."""
    lr: float = Field(1e-3, gt=0, le=1.0)
    """Peak learning rate."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup steps before cosine decay."""
    loss: Literal["clip", "siglip"] = "clip"
    """Symmetric InfoNCE (clip) or sigmoid pairwise (siglip)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision; bf16 applies on GPU only."""
    augment: bool = True
    """Random resized crop + flip + colour jitter on training images."""
    scene_augment: float = Field(0.5, ge=0.0, le=1.0)
    """With augment on: the share of augmented views that show the product cut from its packshot
    and placed into a crop of another catalog photo (`mmray.model.transforms.in_scene`), so that
    search by shopper photos (products on shelves, rails, tables) finds the packshot."""

    @property
    def scene_share(self) -> float:
        """The share of augmented views put into scenes: `scene_augment`, or 0 with augment off."""
        return self.scene_augment if self.augment else 0.0
    max_failures: int = Field(2, ge=0)
    """Worker failures Ray Train recovers from (resuming from the last checkpoint)."""
    seed: int = 0
    """Seed for init, shuffling and caption choice."""
