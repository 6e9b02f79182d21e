"""The copy request, the JSON an LLM must return (validated with pydantic, repaired once), and
the response shape of /v1/copy."""
from __future__ import annotations

import json
import re

import json_repair
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmray.config.copy import COPY_KINDS

_TONE_RE = re.compile(r"[A-Za-z][A-Za-z ,'-]{0,39}")


class CopyRequest(BaseModel):
    """What to write for one product."""

    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(..., min_length=1, max_length=200)
    kinds: list[str] = Field(default_factory=lambda: list(COPY_KINDS), min_length=1)
    tone: str | None = Field(None, description="A few words, e.g. 'friendly', 'premium, calm'")
    channel: str | None = Field(None, description="Whose length limits apply (copy.channels); default copy.default_channel")
    n_variants: int = Field(1, ge=1)
    engine: str | None = Field(None, description="Override copy.engine for this request")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in COPY_KINDS]
        if bad:
            raise ValueError(f"unknown kind(s) {bad}: expected some of {list(COPY_KINDS)}")
        return list(dict.fromkeys(v))

    @field_validator("tone")
    @classmethod
    def _tone(cls, v: str | None) -> str | None:
        if v is not None and not _TONE_RE.fullmatch(v.strip()):
            raise ValueError("tone: up to 40 letters, spaces, commas, hyphens")
        return v.strip() if v else None


class CopyDraft(BaseModel):
    """An engine's raw answer: only the kinds that were asked for are required."""

    model_config = ConfigDict(extra="ignore")
    title: str | None = None
    description: str | None = None
    bullets: list[str] | None = None
    ad: str | None = None

    @field_validator("bullets", mode="before")
    @classmethod
    def _bullets(cls, v):
        if isinstance(v, str):  # a model that wrote bullets as one string, one per line
            return [b.strip(" -•*") for b in v.splitlines() if b.strip(" -•*")]
        if isinstance(v, list):
            return [str(b) for b in v if isinstance(b, (str, int, float)) and str(b).strip()]
        return v

    @field_validator("title", "description", "ad", mode="before")
    @classmethod
    def _text(cls, v):
        if isinstance(v, list):  # ["a", "b"] where a string was asked for
            return " ".join(str(x) for x in v if isinstance(x, (str, int, float)))
        return v

    def get(self, kind: str) -> str | list[str] | None:
        return getattr(self, kind)


def json_schema_for(kinds: list[str]) -> dict:
    """The JSON schema an LLM is asked to follow for `kinds`."""
    props = {"title": {"type": "string"}, "description": {"type": "string"},
             "bullets": {"type": "array", "items": {"type": "string"}}, "ad": {"type": "string"}}
    return {"type": "object", "properties": {k: props[k] for k in kinds}, "required": list(kinds)}


def parse_draft(text: str, kinds: list[str]) -> tuple[CopyDraft | None, str, bool]:
    """(draft, error, repaired): the first JSON object in `text`, validated against the schema for
    `kinds`. Broken JSON (unclosed strings, trailing commas, code fences) is repaired by json_repair;
    a draft that still lacks a kind, or holds no object, gives (None, why, ...)."""
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in the output", False
    body, repaired = text[start:], False
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        obj, repaired = json_repair.loads(body), True
    if not isinstance(obj, dict):
        return None, "the output is not a JSON object", repaired
    try:
        draft = CopyDraft.model_validate(obj)
    except ValidationError as e:
        return None, "schema: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())[:300], repaired
    missing = [k for k in kinds if not draft.get(k)]
    if missing:
        return None, f"schema: missing or empty {missing}", repaired
    return draft, "", repaired
