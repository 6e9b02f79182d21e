"""Catalog text cleaning: HTML removed, entities decoded, NFKC-normalised, whitespace tidied."""
from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser
from typing import Any


class _TextExtractor(HTMLParser):
    """HTML to plain text: block tags become line breaks, <li> a '- ' bullet, script/style vanish."""

    BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section"}
    SKIP = {"script", "style", "noscript", "template", "iframe", "object"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)


_TAG_RE = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# what makes ASCII text need the full path: markup or entities, control characters (tabs and
# newlines included), runs of spaces, spaces at either end
_NEEDS_CLEANING_RE = re.compile(r"[<&\x00-\x1f\x7f]|  |^ | $")


def clean_text(value: Any, max_chars: int = 20_000) -> tuple[str, bool]:
    """Plain, NFKC-normalised text with HTML removed; returns (text, whether HTML was found)."""
    if value is None:
        return "", False
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and not _NEEDS_CLEANING_RE.search(text) and text != "-":
        return text[:max_chars], False  # already clean, as most catalog fields are: skip the full path
    return _clean_text_full(text, max_chars)


def _clean_text_full(text: str, max_chars: int) -> tuple[str, bool]:
    if not _TAG_RE.search(text):
        text = html.unescape(text)  # plain text, or markup escaped as entities (&lt;script&gt;)
    had_html = bool(_TAG_RE.search(text))
    if had_html:
        parser = _TextExtractor()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    text = unicodedata.normalize("NFKC", _CTRL_RE.sub(" ", text))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = "\n".join(line for line in lines if line and line != "-")
    return text[:max_chars], had_html
