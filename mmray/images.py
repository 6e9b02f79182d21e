"""Safe image reading and decoding: format by magic bytes, size and pixel caps, EXIF orientation,
resize; remote reads with timeouts.

The same `decode_image` guards the preprocessing job and the HTTP upload routes, so an image
the server refuses is one the pipeline would have quarantined, for the same reason.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass

import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError

from mmray.storage import resolve_filesystem

# Pillow's own bomb check warns at 89 Mpx; ours runs first with the configured cap, so
# Pillow's is only a backstop for files whose header lies about their size.
Image.MAX_IMAGE_PIXELS = 200_000_000

MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is a stable code, `detail` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, resized so the longest side <= the requested size
    source_format: str
    source_size: tuple[int, int]


def sniff_format(head: bytes) -> str | None:
    """Image format from the first bytes, or None: file names and Content-Type are never trusted."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def decode_image(data: bytes, *, max_side: int, allowed_formats: list[str], max_pixels: int,
                 max_bytes: int) -> DecodedImage:
    """Check and decode `data` into an RGB image no larger than `max_side`; raise ImageRejected."""
    if len(data) > max_bytes:
        raise ImageRejected("file_too_large", f"{len(data)} bytes > limit {max_bytes}")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageRejected("not_an_image", "content is not a known image format (checked by magic bytes)")
    if fmt not in allowed_formats:
        raise ImageRejected("unsupported_format", f"{fmt} is not allowed (allowed: {', '.join(allowed_formats)})")
    try:
        with warnings.catch_warnings():  # our own pixel cap below reports it, as a quarantine reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as e:  # Pillow's backstop fires at open for > 2x its own cap
        raise ImageRejected("too_many_pixels", str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageRejected("corrupt_image", f"cannot read {fmt} header: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    if w < 1 or h < 1:
        raise ImageRejected("corrupt_image", f"invalid size {w}x{h}")
    try:
        if fmt == "JPEG":
            # DCT-domain downscaling: decodes at 1/2..1/8 size when the target is small (much faster).
            im.draft("RGB", (max_side, max_side))
        im.load()
    except OSError as e:
        reason = "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
        raise ImageRejected(reason, f"cannot decode {fmt}: {e}") from None
    except (Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise ImageRejected("corrupt_image", f"cannot decode {fmt}: {e}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block must not lose the image  # noqa: BLE001
        pass
    im = to_rgb(im)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return DecodedImage(im, fmt, (w, h))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparent areas over white (product shots are shown on white)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB") if im.mode != "RGB" else im


def encode_image(im: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def read_image_bytes(ref: str, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """Read an image file (local path or URI), refusing one over `max_bytes` before reading it.

    `ref` must be one that mmray.catalog.resolve_image_ref let through. `timeout_s` bounds each
    request to s3:// and gs:// (None: pyarrow's defaults); a failed read is `image_read_failed`.
    """
    try:
        fs, path = _image_filesystem(ref, timeout_s)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as e:
        raise ImageRejected("missing_image", f"cannot open {ref}: {e}") from None
    if info.type.name != "File":
        raise ImageRejected("missing_image", f"image file not found: {ref}")
    if info.size is not None and info.size > max_bytes:
        raise ImageRejected("file_too_large", f"{ref} is {info.size} bytes > limit {max_bytes}")
    try:
        with fs.open_input_stream(path) as f:
            return f.read(max_bytes + 1)
    except OSError as e:  # a timeout, a connection lost mid-read, a file we may not read
        raise ImageRejected("image_read_failed", f"cannot read {ref}: {e}") from None


def _image_filesystem(uri: str, timeout_s: float | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem to read `uri` through: with timeouts for s3:// and gs://, else the usual one."""
    if timeout_s is not None and uri.startswith("s3://"):
        path = uri[len("s3://"):]
        # FileSystem.from_uri takes no timeouts, and the S3FileSystem constructor, unlike from_uri,
        # ignores AWS_ENDPOINT_URL (pyarrow 26): pass it on. With neither an endpoint nor a region
        # set, the bucket's own region is looked up, as from_uri does.
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        if region is None and endpoint is None:
            region = _bucket_region(path.split("/", 1)[0])
        return _s3_filesystem(timeout_s, endpoint, region), path
    if timeout_s is not None and uri.startswith(("gs://", "gcs://")):
        return _gcs_filesystem(timeout_s), uri.split("://", 1)[1]
    return resolve_filesystem(uri)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    return pafs.resolve_s3_region(bucket)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(timeout_s: float, endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region, connect_timeout=timeout_s,
                             request_timeout=timeout_s)


@functools.lru_cache(maxsize=4)
def _gcs_filesystem(timeout_s: float) -> pafs.GcsFileSystem:
    return pafs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=timeout_s))


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
