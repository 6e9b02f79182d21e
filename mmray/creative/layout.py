"""Where things go on a creative: the safe area of a channel format, the product's box and the
text column, by the format's shape (side by side when wide, stacked when square or tall)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from mmray.config.creative import CreativeConfig, FormatConfig

SIZE_RE = re.compile(r"([0-9]{2,5})x([0-9]{2,5})")


class CreativeRequestError(ValueError):
    """A request the studio cannot serve; `code` is stable (the API answers 422 with it)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def contains(self, other: Box) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def resolve_format(name: str, cfg: CreativeConfig) -> FormatConfig:
    """A named format of the config, or a custom `WxH` within the configured bounds."""
    if name in cfg.formats:
        return cfg.formats[name]
    match = SIZE_RE.fullmatch(name or "")
    if not match:
        raise CreativeRequestError("unknown_format", f"format {name[:40]!r}: not one of {', '.join(cfg.formats)} "
                                                     "and not WIDTHxHEIGHT")
    w, h = int(match.group(1)), int(match.group(2))
    if not cfg.allow_custom_sizes:
        raise CreativeRequestError("unknown_format", f"format {name!r}: custom sizes are off; use one of "
                                                     f"{', '.join(cfg.formats)}")
    if max(w, h) > cfg.max_side or w * h > cfg.max_pixels:
        raise CreativeRequestError("size_too_large", f"format {name!r}: at most {cfg.max_side} px a side and "
                                                     f"{cfg.max_pixels} pixels")
    if min(w, h) < cfg.min_side:
        raise CreativeRequestError("size_too_small", f"format {name!r}: at least {cfg.min_side} px a side")
    return FormatConfig(width=w, height=h, channel="custom")


def safe_area(fmt: FormatConfig) -> Box:
    mx, top, bottom = round(fmt.width * fmt.safe_x), round(fmt.height * fmt.safe_top), round(fmt.height * fmt.safe_bottom)
    return Box(mx, top, fmt.width - mx, fmt.height - bottom)


@dataclass
class Plan:
    safe: Box
    product: Box
    text: Box | None  # the column the headline, price and button share
    side: bool  # text beside the product (wide formats) or below it


def plan(fmt: FormatConfig, with_text: bool) -> Plan:
    safe = safe_area(fmt)
    if not with_text:
        return Plan(safe, safe, None, False)
    gap_x, gap_y = round(0.04 * safe.w), round(0.035 * safe.h)
    if fmt.width / fmt.height >= 1.15:  # wide: text left, product right
        split = safe.x0 + round(0.54 * safe.w)
        return Plan(safe, Box(split + gap_x // 2, safe.y0, safe.x1, safe.y1),
                    Box(safe.x0, safe.y0, split - gap_x // 2, safe.y1), True)
    split = safe.y0 + round(0.6 * safe.h)  # square or tall: product above, text below
    return Plan(safe, Box(safe.x0, safe.y0, safe.x1, split - gap_y // 2),
                Box(safe.x0, split + gap_y // 2, safe.x1, safe.y1), False)
