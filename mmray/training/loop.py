"""The Ray Train worker loop: contrastive steps, per-epoch evaluation and checkpoints, resume.

Gradients are averaged with an explicit all-reduce rather than DDP: the loop calls the
model's projection methods (not `forward`), which DDP's reducer does not track.
"""
from __future__ import annotations

import io
import math
import os
import random
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from mmray.config import MmrayConfig
from mmray.loss import ClipLoss, SigLipLoss
from mmray.model import build_model, save_checkpoint
from mmray.model.checkpoint import WEIGHTS_FILE
from mmray.training.data import maybe_in_scene
from mmray.training.evaluate import evaluate

MAX_LOGIT_SCALE = math.log(100.0)


class TrainState:
    """Model + optimizer + schedule + position; saved into and restored from a checkpoint folder."""

    def __init__(self, cfg: MmrayConfig, steps_per_epoch: int):
        self.cfg = cfg
        self.model = build_model(cfg.model, seed=cfg.train.seed)  # the same start on every worker
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim < 2]
        self.params = decay + no_decay
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr)
        total = max(1, cfg.train.epochs * steps_per_epoch // cfg.train.grad_accum_steps)
        warmup = min(cfg.train.warmup_steps, total // 2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []  # per-epoch metrics, carried through checkpoints
        self.resumed_from_epoch = 0

    def save(self, folder: str, metrics: dict) -> None:
        save_checkpoint(self.model, folder, metrics, extra={
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history})

    def load(self, folder: str) -> None:
        payload = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        self.model.load_state_dict(payload["state"], strict=False)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.history = list(payload.get("history", []))
        self.resumed_from_epoch = self.epoch


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_epoch(state: TrainState, batches, rank: int, world: int, cached: bool, epoch: int) -> float:
    """One pass over this worker's shard; returns the mean loss."""
    cfg, model = state.cfg, state.model
    loss_fn = (ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
               if cfg.train.loss == "clip" else SigLipLoss(rank=rank, world_size=world))
    gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch * 101 + rank)
    augment = None if cached else model.image_transform(train=cfg.train.augment)
    scene_rng = random.Random(cfg.train.seed * 100_003 + epoch * 101 + rank)
    use_bf16 = cfg.train.precision == "bf16" and torch.cuda.is_available()
    device = next(model.parameters()).device
    model.train()
    losses = []
    for i, batch in enumerate(batches):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            image, text = embed_batch(model, batch, cached, augment, gen, device, cfg.train.scene_share, scene_rng)
            groups = torch.as_tensor(batch["group"], device=device)
            if cfg.train.loss == "clip":
                loss = loss_fn(image, text, model.logit_scale, groups)
            else:
                loss = loss_fn(image, text, model.logit_scale, model.logit_bias, groups)
        (loss / cfg.train.grad_accum_steps).backward()
        losses.append(loss.item())
        if (i + 1) % cfg.train.grad_accum_steps == 0:
            average_gradients(state.params, world)
            state.optimizer.step()
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            state.step += 1
    return float(np.mean(losses)) if losses else float("nan")


def embed_batch(model, batch, cached: bool, augment, gen: torch.Generator, device, scene_p: float,
                scene_rng: random.Random):
    """(B, E) image and text embeddings of a batch: one random view and one random caption per row."""
    if cached:
        img_feats = torch.as_tensor(batch["image_feats"], device=device)  # (B, V, D_img)
        txt_feats = torch.as_tensor(batch["text_feats"], device=device)   # (B, C, D_txt)
        b = img_feats.shape[0]
        v = torch.randint(img_feats.shape[1], (b,), generator=gen)
        c = torch.randint(txt_feats.shape[1], (b,), generator=gen)
        rows = torch.arange(b)
        return model.project_image(img_feats[rows, v]), model.project_text(txt_feats[rows, c])
    images = [Image.open(io.BytesIO(bytes(x))).convert("RGB") for x in batch["image"]]
    pixels = torch.stack([augment(maybe_in_scene(images, i, scene_p, scene_rng)) for i in range(len(images))])
    picks = torch.randint(1 << 30, (len(batch["captions"]),), generator=gen).tolist()
    texts = [list(c)[p % len(c)] for c, p in zip(batch["captions"], picks)]
    tokens = {k: v.to(device) for k, v in model.tokenize(texts).items()}
    return model.encode_image(pixels.to(device)), model.encode_text(**tokens)


def average_gradients(params, world: int) -> None:
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (runs on every worker).

    `config["epoch_callback"]`, if set, is called on every worker after each epoch as
    `epoch_callback(epoch=, rank=, metrics=)` (`epoch`: epochs done, from 1; `metrics`: what this
    worker reported). It runs after `ray.train.report`, so rank 0's checkpoint of `epoch` is
    written: a run whose worker dies in the callback resumes from `epoch`, once the controller
    has registered that report (it polls: a callback that kills the worker should wait a moment)."""
    import ray.train

    cfg = MmrayConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    state = TrainState(cfg, config["steps_per_epoch"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state.load(folder)
    if torch.cuda.is_available() and cfg.train.use_gpu:
        state.model.to(ray.train.torch.get_device())
    shard = ray.train.get_dataset_shard("train")
    local_batch = cfg.train.batch_size // world
    for epoch in range(state.epoch, cfg.train.epochs):
        start = time.time()
        batches = shard.iter_batches(batch_size=local_batch, drop_last=True, batch_format="numpy",
                                     local_shuffle_buffer_size=4 * local_batch, local_shuffle_seed=epoch * 7919 + rank)
        loss = run_epoch(state, batches, rank, world, config["cached"], epoch)
        state.epoch = epoch + 1
        metrics = {"epoch": epoch + 1, "step": state.step, "loss": loss, "epoch_s": time.time() - start,
                   "temperature": float(1.0 / state.model.logit_scale.exp()),
                   "resumed_from_epoch": state.resumed_from_epoch}
        if rank == 0:
            metrics.update(evaluate(state.model, config["eval"]))
            state.history.append(metrics)
            with tempfile.TemporaryDirectory() as folder:
                state.save(folder, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)
        if config.get("epoch_callback") is not None:
            config["epoch_callback"](epoch=epoch + 1, rank=rank, metrics=dict(metrics))
