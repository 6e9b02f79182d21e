"""The GPU backend of the CreativeStudio: a diffusers inpainting pipeline paints the scene around
the product and never its pixels.

The composed creative (product on its generated background) is the pipeline's starting image;
the repaint mask is everything but the product (the placement mask, grown by a few pixels so the
edge is not repainted); afterwards the product's own pixels are put back through that mask, so
the product in a creative is exactly the catalog's. Weights come from `creative.diffusion.weights`:
a folder in diffusers' `save_pretrained` layout on a local or mounted path, or under an `s3://` /
`gs://` prefix copied once into the local cache. Nothing is downloaded from a model hub.
"""
from __future__ import annotations

import hashlib
import logging
import os

from PIL import Image, ImageFilter

from mmray.config.creative import DiffusionConfig

log = logging.getLogger(__name__)


def local_weights(uri: str, cache_dir: str) -> str:
    """A local folder with the pipeline: `uri` itself if local, else a cached copy of the bucket prefix."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"creative.diffusion.weights: no folder {path!r}")
        return path
    import pyarrow.fs as pafs

    from mmray.storage import resolve_filesystem

    fs, base = resolve_filesystem(uri)
    target = os.path.join(cache_dir, "diffusion", hashlib.sha256(uri.encode()).hexdigest()[:16])
    done = os.path.join(target, ".complete")
    if not os.path.exists(done):
        log.info("copying diffusion weights from %s", uri)
        os.makedirs(target, exist_ok=True)
        pafs.copy_files(base, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        open(done, "w").close()
    return target


class DiffusionPainter:
    """Inpaints the scene of a composed creative; `pipeline` is any diffusers inpainting pipeline."""

    def __init__(self, cfg: DiffusionConfig, pipeline):
        self.cfg, self.pipeline = cfg, pipeline

    @classmethod
    def load(cls, cfg: DiffusionConfig, cache_dir: str | None = None) -> DiffusionPainter:
        import torch
        from diffusers import AutoPipelineForInpainting

        if not cfg.weights:
            raise ValueError("creative.diffusion.weights is not set")
        folder = local_weights(cfg.weights, cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "mmray"))
        dtype = getattr(torch, cfg.dtype) if cfg.device != "cpu" else torch.float32
        pipe = AutoPipelineForInpainting.from_pretrained(folder, dtype=dtype, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return cls(cfg, pipe.to(cfg.device))

    def prompt(self, product) -> str:
        leaf = (product.category or "").split("/")[-1] or "product"
        return self.cfg.prompt.format(title=product.title, category=leaf.lower(), color=(product.color or "soft").lower())

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The pipeline's size: the longest side `work_side`, both sides multiples of 8."""
        w, h = size
        scale = self.cfg.work_side / max(w, h)
        return max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8)

    def paint(self, canvas: Image.Image, keep: Image.Image, product) -> Image.Image:
        """`canvas` (RGB) with everything outside `keep` (L, 255 = product) repainted."""
        import torch

        ws = self.work_size(canvas.size)
        grown = keep.filter(ImageFilter.MaxFilter(5))
        repaint = grown.point(lambda v: 0 if v > 16 else 255)
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.seed)
        out = self.pipeline(prompt=self.prompt(product), negative_prompt=self.cfg.negative_prompt,
                            image=canvas.convert("RGB").resize(ws, Image.BICUBIC),
                            mask_image=repaint.resize(ws, Image.NEAREST), height=ws[1], width=ws[0],
                            strength=self.cfg.strength, num_inference_steps=self.cfg.steps,
                            guidance_scale=self.cfg.guidance_scale, generator=generator).images[0]
        scene = out.convert("RGB").resize(canvas.size, Image.LANCZOS)
        return Image.composite(canvas.convert("RGB"), scene, keep)  # the product's own pixels, exactly
