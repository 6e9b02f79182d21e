"""Safe image decoding: magic bytes, byte and pixel caps (checked before decoding), orientation, resize."""
from __future__ import annotations

import hashlib
import io
import socket
import time
import warnings

import pytest
from conftest import bomb_png, jpeg_bytes, png_bytes
from PIL import Image

from mmray.images import (
    ImageRejected,
    content_hash,
    decode_image,
    encode_image,
    read_image_bytes,
    sniff_format,
)

LIMITS = {"max_side": 256, "allowed_formats": ["JPEG", "PNG", "WEBP"], "max_pixels": 40_000_000,
          "max_bytes": 20 * 1024 * 1024}


def decode(data: bytes, **overrides):
    return decode_image(data, **{**LIMITS, **overrides})


def rejected(data: bytes, **overrides) -> ImageRejected:
    with pytest.raises(ImageRejected) as e:
        decode(data, **overrides)
    return e.value


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("head, expected", [
    (b"\xff\xd8\xff\xe0" + bytes(12), "JPEG"),
    (b"\x89PNG\r\n\x1a\n" + bytes(8), "PNG"),
    (b"GIF87a" + bytes(10), "GIF"),
    (b"GIF89a" + bytes(10), "GIF"),
    (b"BM" + bytes(14), "BMP"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
    (b"<html><body>", None),
    (b"", None),
    (b"\xff\xd8", None),
])
def test_sniff_format(head, expected):
    assert sniff_format(head) == expected


def test_jpeg_is_resized_keeping_aspect_ratio():
    out = decode(jpeg_bytes(400, 300))
    assert out.source_format == "JPEG"
    assert out.source_size == (400, 300)
    assert out.image.mode == "RGB"
    assert out.image.size == (256, 192)


def test_small_image_is_not_upscaled():
    out = decode(jpeg_bytes(40, 30))
    assert out.image.size == (40, 30)


def test_png_transparency_goes_over_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    out = decode(png_bytes(im))
    assert out.source_format == "PNG" and out.image.mode == "RGB"
    assert out.image.getpixel((5, 5)) == (255, 255, 255)
    assert out.image.getpixel((0, 0)) == (0, 0, 255)


def test_palette_and_grey_images_become_rgb():
    out = decode(png_bytes(Image.new("L", (8, 4), 128)))
    assert out.image.mode == "RGB" and out.image.getpixel((0, 0)) == (128, 128, 128)
    out = decode(png_bytes(Image.new("P", (8, 4), 3)))
    assert out.image.mode == "RGB" and out.image.size == (8, 4)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(Image.new("RGB", (40, 20), (0, 128, 0)), "JPEG", exif=exif.tobytes())
    out = decode(data)
    assert out.source_size == (40, 20)
    assert out.image.size == (20, 40)


def test_webp_allowed_gif_not_by_default():
    out = decode(encoded(Image.new("RGB", (30, 20), (1, 2, 3)), "WEBP"))
    assert out.source_format == "WEBP" and out.image.size == (30, 20)
    gif = encoded(Image.new("P", (30, 20)), "GIF")
    err = rejected(gif)
    assert err.reason == "unsupported_format" and "GIF" in err.detail
    assert decode(gif, allowed_formats=["GIF"]).image.size == (30, 20)


def test_truncated_jpeg():
    data = jpeg_bytes(320, 240, seed=3)
    assert rejected(data[: len(data) // 2]).reason == "truncated_image"


@pytest.mark.parametrize("data", [
    b"<html><body>404 Not Found</body></html>",
    b"just some text pretending to be a jpg\n",
    bytes(1000),
    b"",
])
def test_non_image_bytes(data):
    assert rejected(data).reason == "not_an_image"


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
    b"\xff\xd8\xff" + b"garbage" * 10,
])
def test_image_magic_with_garbage_body(data):
    assert rejected(data).reason == "corrupt_image"


def test_decompression_bomb_rejected_from_header():
    data = bomb_png(20_000, 20_000)
    assert len(data) < 100_000  # tiny on disk...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own warning is not let out: the rejection says it
        err = rejected(data)  # ...400 Mpx decoded: refused from the header, never decoded
    assert err.reason == "too_many_pixels"
    assert "20000x20000" in err.detail


def test_bomb_above_pillows_own_cap_is_rejected_not_raised():
    # 900 Mpx: Pillow raises DecompressionBombError inside Image.open; that must be a rejection too.
    data = bomb_png(30_000, 30_000)
    assert rejected(data).reason == "too_many_pixels"
    assert rejected(data, max_pixels=10**12).reason == "too_many_pixels"


def test_pixel_cap_is_inclusive():
    data = jpeg_bytes(100, 100)
    assert rejected(data, max_pixels=9_999).reason == "too_many_pixels"
    assert decode(data, max_pixels=10_000).image.size == (100, 100)


def test_byte_cap():
    data = jpeg_bytes(64, 64)
    err = rejected(data, max_bytes=len(data) - 1)
    assert err.reason == "file_too_large" and str(len(data)) in err.detail
    assert decode(data, max_bytes=len(data)).image.size == (64, 64)


def test_read_image_bytes(tmp_path):
    data = jpeg_bytes(32, 32)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert read_image_bytes(str(path), max_bytes=len(data)) == data
    err = pytest.raises(ImageRejected, read_image_bytes, str(path), max_bytes=len(data) - 1).value
    assert err.reason == "file_too_large"
    err = pytest.raises(ImageRejected, read_image_bytes, str(tmp_path / "nope.jpg"), max_bytes=10**6).value
    assert err.reason == "missing_image" and "nope.jpg" in err.detail
    err = pytest.raises(ImageRejected, read_image_bytes, str(tmp_path), max_bytes=10**6).value
    assert err.reason == "missing_image"
    assert read_image_bytes(str(path), max_bytes=len(data), timeout_s=5) == data  # local reads ignore the timeout


def test_read_image_bytes_from_s3_with_a_timeout_reaches_aws_endpoint_url(s3_bucket):
    # the timeout needs our own S3FileSystem, whose constructor does not read AWS_ENDPOINT_URL itself
    import boto3

    data = jpeg_bytes(32, 32)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="images/a.jpg", Body=data)
    assert read_image_bytes(f"s3://{s3_bucket}/images/a.jpg", max_bytes=len(data), timeout_s=5) == data
    err = pytest.raises(ImageRejected, read_image_bytes, f"s3://{s3_bucket}/images/nope.jpg", 10**6, 5).value
    assert err.reason == "missing_image"


def test_read_image_bytes_gives_up_on_a_server_that_never_answers(monkeypatch):
    with socket.socket() as silent:  # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        err = pytest.raises(ImageRejected, read_image_bytes, "s3://shop/a.jpg", 10**6, 0.5).value
        assert err.reason == "missing_image" and "s3://shop/a.jpg" in err.detail
        assert time.monotonic() - start < 30  # retries of 0.5 s requests; pyarrow's defaults wait ~100 s here


def test_encode_image_and_content_hash():
    out = encode_image(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG", 90)
    assert out[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(out)).size == (8, 8)
    assert encode_image(Image.new("RGB", (8, 8)), "PNG")[:8] == b"\x89PNG\r\n\x1a\n"
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
