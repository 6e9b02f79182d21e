"""Image references: which files and objects a catalog row may name, made absolute.

A catalog comes from outside (a vendor feed, an export), so what its rows may make the
pipeline read is confined. A reference may name
  - a file inside the image root (`data.image_root`, by default the catalog's folder): a path
    relative to it or absolute, checked after `..` and symbolic links are resolved; under a
    remote root (s3://bucket/catalog/) a relative reference joins it and must not use `..`;
  - an object under a prefix of `data.allowed_image_uris` (s3://shop-images/, gs://b/photos/).
Anything else raises ImageRejected, which quarantines the row, with one of these reasons:
  image_ref_invalid       empty, or holds a NUL character
  image_ref_outside_root  a path that ends up outside the image root, or `..` in a URI
  image_ref_not_allowed   file://, or a URI outside the image root and every allowed prefix
  image_ref_has_query     a URI with a ?query or #fragment (pyarrow takes filesystem options,
                          endpoint_override among them, from a URI's query)
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from urllib.parse import unquote

from mmray.images import ImageRejected

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_image_ref(ref: str, image_root: str, allowed_uris: Sequence[str] = ()) -> str:
    """`ref` as an absolute path or URI that may be read; ImageRejected when it may not (see above)."""
    if not ref or "\x00" in ref:
        raise ImageRejected("image_ref_invalid", "the reference is empty or holds a NUL character")
    remote_root = _is_uri(image_root) and not image_root.lower().startswith("file://")
    if _is_uri(ref):
        return _check_uri(ref, [image_root, *allowed_uris] if remote_root else list(allowed_uris))
    if remote_root:
        return _join_remote(ref, image_root)
    if "://" in ref:
        raise ImageRejected("image_ref_not_allowed", "neither a path nor a URI of the form scheme://...")
    root = image_root[len("file://"):] if image_root.lower().startswith("file://") else image_root
    return _check_path(ref, root)


def _is_uri(ref: str) -> bool:
    return _SCHEME_RE.match(ref) is not None


def _check_path(ref: str, root: str) -> str:
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, ref)  # an absolute `ref` stays as it is
    real = os.path.realpath(candidate)  # symbolic links resolved first, so a link cannot lead out
    if os.path.commonpath([real_root, real]) != real_root:
        via = " through a symbolic link" if os.path.normpath(candidate) != real else ""
        raise ImageRejected("image_ref_outside_root", f"resolves{via} to {real}, outside the image root {real_root}")
    return real


def _join_remote(ref: str, root: str) -> str:
    """A relative reference under a remote root: the object it names below that root."""
    _refuse_query(ref)  # it becomes part of a URI
    if ref.startswith("/"):
        raise ImageRejected("image_ref_outside_root", f"a local absolute path, outside the image root {root}")
    key = "/".join(seg for seg in ref.split("/") if seg not in ("", "."))  # ./images/a.jpg names images/a.jpg
    return _check_uri(f"{root.rstrip('/')}/{key}", [root])


def _refuse_query(uri: str) -> None:
    if "?" in uri or "#" in uri:
        raise ImageRejected("image_ref_has_query", "image URIs may not carry a ?query or #fragment")


def _check_uri(uri: str, prefixes: list[str]) -> str:
    _refuse_query(uri)
    scheme, rest = uri.split("://", 1)
    if scheme.lower() == "file":
        raise ImageRejected("image_ref_not_allowed", "file:// URIs are refused; use a path inside the image root")
    # `..` is checked decoded too: some filesystems percent-decode a URI's path (%2e%2e is `..`)
    if any(segment == ".." for part in (rest, unquote(rest)) for segment in part.split("/")):
        raise ImageRejected("image_ref_outside_root", "image URIs may not contain '..' segments")
    uri = f"{scheme.lower()}://{rest}"
    allowed = [_as_prefix(p) for p in prefixes]
    if not any(uri.startswith(p) for p in allowed):
        raise ImageRejected("image_ref_not_allowed",
                            f"outside the image root and data.allowed_image_uris ({', '.join(allowed) or 'none'})")
    return uri


def _as_prefix(uri: str) -> str:
    """A URI prefix that matches whole path segments only: s3://shop never lets s3://shop-evil/ in."""
    scheme, rest = uri.split("://", 1)
    return f"{scheme.lower()}://{rest.rstrip('/')}/"
