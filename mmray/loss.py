"""Contrastive losses with features gathered across workers and same-product masking.

`ClipLoss` is symmetric InfoNCE. With `world_size > 1` each worker gathers every worker's
features, so the negatives are the global batch; gradients reach each worker's local features
either through a differentiable all-gather (`gather_with_grad`) or by splicing the local
tensor back into the gathered one. `local_loss` computes only the local rows (the cheap
choice, open_clip's scheme); the mean over workers equals the single-process loss.

`groups` (one int per row) marks rows that must not be each other's negatives: colour variants
of one product or items sharing an image. Their off-diagonal logits are dropped from the softmax.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(x: torch.Tensor, rank: int, world_size: int, with_grad: bool) -> torch.Tensor:
    """Concatenate `x` (B, ...) from all workers in rank order; gradients flow to the local part."""
    if world_size == 1:
        return x
    if with_grad:
        import torch.distributed.nn as dist_nn

        return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def same_group_mask(row_groups: torch.Tensor, col_groups: torch.Tensor, row_offset: int) -> torch.Tensor:
    """(R, C) bool: True where row i and column j share a group but are not the positive pair."""
    mask = row_groups[:, None] == col_groups[None, :]
    idx = torch.arange(row_groups.shape[0], device=row_groups.device)
    mask[idx, idx + row_offset] = False
    return mask


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the (gathered) batch."""

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                groups: torch.Tensor | None = None) -> torch.Tensor:
        # image, text: (B, E) unit-norm local features; logit_scale: scalar (log of 1/temperature)
        scale = logit_scale.exp()
        all_image = gather_features(image, self.rank, self.world_size, self.gather_with_grad)  # (W*B, E)
        all_text = gather_features(text, self.rank, self.world_size, self.gather_with_grad)
        all_groups = None
        if groups is not None:
            all_groups = gather_features(groups, self.rank, self.world_size, with_grad=False)
        if self.local_loss:
            offset = self.rank * image.shape[0]
            logits_i = scale * image @ all_text.T  # (B, W*B): local images vs every text
            logits_t = scale * text @ all_image.T
            row_groups = groups
        else:
            offset = 0
            logits_i = scale * all_image @ all_text.T  # (W*B, W*B)
            logits_t = logits_i.T
            row_groups = all_groups
        labels = torch.arange(logits_i.shape[0], device=image.device) + offset
        if all_groups is not None:
            mask = same_group_mask(row_groups, all_groups, offset)
            logits_i = logits_i.masked_fill(mask, float("-inf"))
            logits_t = logits_t.masked_fill(mask, float("-inf"))
        return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP) against the gathered texts; same-group pairs are ignored."""

    def __init__(self, rank: int = 0, world_size: int = 1, gather_with_grad: bool = True):
        super().__init__()
        self.rank, self.world_size, self.gather_with_grad = rank, world_size, gather_with_grad

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        all_text = gather_features(text, self.rank, self.world_size, self.gather_with_grad)  # (W*B, E)
        offset = self.rank * image.shape[0]
        logits = logit_scale.exp() * image @ all_text.T + logit_bias  # (B, W*B)
        labels = -torch.ones_like(logits)
        idx = torch.arange(image.shape[0], device=image.device)
        labels[idx, idx + offset] = 1.0
        weight = torch.ones_like(logits)
        if groups is not None:
            all_groups = gather_features(groups, self.rank, self.world_size, with_grad=False)
            weight = weight.masked_fill(same_group_mask(groups, all_groups, offset), 0.0)
        # Normalised by local rows, as in the SigLIP paper; summed over workers by DDP averaging.
        return -(F.logsigmoid(labels * logits) * weight).sum() / image.shape[0]
