"""Type for creatives: font files, WCAG contrast, and fitting a text into a box (shrink, wrap, ellipsis).

Fonts: DejaVu Sans (Bold) as shipped inside the matplotlib wheel (DejaVu licence: Bitstream Vera
terms, free to use and redistribute), else Debian's `fonts-dejavu-core`; a config path wins.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass

import numpy as np
from PIL import ImageFont

log = logging.getLogger(__name__)

ELLIPSIS = "\u2026"
SYSTEM_DEJAVU = "/usr/share/fonts/truetype/dejavu"
LINE_SPACING = 1.12


class FontMissing(RuntimeError):
    """No usable font file: the message says what to install or set."""


def find_font(path: str | None, bold: bool) -> str:
    """The font file to use: `path` if given (it must exist), else DejaVu Sans from matplotlib's
    wheel, else the system's DejaVu (logged, so a deployment that lacks matplotlib knows)."""
    if path:
        if not os.path.isfile(path):
            raise FontMissing(f"font file {path!r} (creative.font_bold/font_regular) does not exist")
        return path
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        shipped = os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf", name)
        if os.path.isfile(shipped):
            return shipped
    system = os.path.join(SYSTEM_DEJAVU, name)
    if os.path.isfile(system):
        log.warning("creative fonts: matplotlib's DejaVu not found, using the system's %s", system)
        return system
    raise FontMissing(f"no {name}: install matplotlib (it ships DejaVu) or Debian's fonts-dejavu-core, "
                      "or set creative.font_bold / creative.font_regular to a .ttf file")


@functools.lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


# --------------------------------------------------------------------------- contrast (WCAG 2.x)


def relative_luminance(rgb) -> np.ndarray:
    """WCAG relative luminance of sRGB colours: (..., 3) values 0-255 -> (...) in [0, 1]."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(a, b) -> np.ndarray:
    """(L1 + 0.05) / (L2 + 0.05) with L1 the lighter of the two colours; 1 to 21."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


def worst_contrast(text_rgb, background: np.ndarray) -> float:
    """The lowest contrast of `text_rgb` against any pixel of `background` (H, W, 3)."""
    lum = relative_luminance(background.reshape(-1, 3))
    lt = float(relative_luminance(text_rgb))
    ratios = (np.maximum(lum, lt) + 0.05) / (np.minimum(lum, lt) + 0.05)
    return float(ratios.min()) if len(ratios) else 21.0


# --------------------------------------------------------------------------- fitting


@dataclass
class FittedText:
    lines: list[str]
    size: int
    line_height: int
    width: int  # widest line, pixels
    height: int  # all lines
    truncated: bool  # cut with an ellipsis (or words dropped) to fit


def text_width(font: ImageFont.FreeTypeFont, text: str) -> int:
    """From the leftmost ink (a glyph may start left of its origin) to the advance or the rightmost
    ink, whichever is further: what a line needs when drawn at `lead(font, text)` from the box edge."""
    if not text:
        return 0
    left, _, right, _ = font.getbbox(text)
    return int(np.ceil(max(font.getlength(text), right) - min(0, left)))


def lead(font: ImageFont.FreeTypeFont, text: str) -> int:
    """How far right of the box edge to put the origin so no ink lies left of the edge."""
    return int(np.ceil(-min(0, font.getbbox(text)[0]))) if text else 0


def line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return int(np.ceil((ascent + descent) * LINE_SPACING))


def wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap; a word wider than the box is broken between characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        if text_width(font, word) > max_width:  # an over-long word: on lines of its own, in pieces
            if current:
                lines.append(current)
            while len(word) > 1 and text_width(font, word) > max_width:
                cut = max(1, _longest_prefix(font, word, max_width))
                lines.append(word[:cut])
                word = word[cut:]
            current = word
            continue
        candidate = f"{current} {word}" if current else word
        if current and text_width(font, candidate) > max_width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _longest_prefix(font, word: str, max_width: int) -> int:
    lo, hi = 0, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(font, word[:mid]) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def ellipsize(font, line: str, max_width: int) -> str:
    """`line` + '…', shortened (at a word break where one is near) until it fits `max_width`."""
    line = line.rstrip()
    while line and text_width(font, line + ELLIPSIS) > max_width:
        line = line[:-1].rstrip()
    return line + ELLIPSIS if text_width(font, line + ELLIPSIS) <= max_width else ""


def fit_text(text: str, font_path: str, box_w: int, box_h: int, max_size: int, min_size: int,
             max_lines: int) -> FittedText:
    """The largest size in [min_size, max_size] at which `text` wraps into at most `max_lines`
    lines inside box_w x box_h; if none, the smallest size with as many lines as fit, the last
    one cut with an ellipsis. Never wider or taller than the box (an empty result if even one
    line of min_size is taller than the box)."""
    text = " ".join(text.split())
    min_size = max(1, min(min_size, max_size))

    def attempt(size: int) -> FittedText:
        font = load_font(font_path, size)
        lines, lh = wrap(text, font, box_w), line_height(font)
        return FittedText(lines, size, lh, max((text_width(font, li) for li in lines), default=0), lh * len(lines), False)

    def fits(f: FittedText) -> bool:
        return len(f.lines) <= max_lines and f.height <= box_h and f.width <= box_w

    lo, hi, best = min_size, max_size, None
    while lo <= hi:  # fitting is monotone in size (smaller text never needs more lines)
        mid = (lo + hi) // 2
        f = attempt(mid)
        if fits(f):
            best, lo = f, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    f = attempt(min_size)
    font = load_font(font_path, min_size)
    room = max(0, min(max_lines, box_h // f.line_height if f.line_height else 0))
    kept = f.lines[:room]
    if kept and len(f.lines) > room:
        kept[-1] = ellipsize(font, kept[-1], box_w)
    kept = [li for li in kept if li and text_width(font, li) <= box_w]
    width = max((text_width(font, li) for li in kept), default=0)
    return FittedText(kept, min_size, f.line_height, width, f.line_height * len(kept), True)
