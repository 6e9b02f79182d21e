"""Text written from catalog facts: training captions and the product text used for retrieval."""
from __future__ import annotations

import hashlib
from typing import Any

from mmray.config import CaptionConfig

_NOUN_FIXES = {"hoodies": "hoodie", "sweatshirts": "sweatshirt", "tees": "tee", "tanks": "tank top",
               "bras": "bra", "watches": "watch", "video download": "training video", "fitness equipment": "fitness gear"}


def garment_noun(category: str) -> str:
    """A singular noun for the leaf category: 'Men/Tops/Hoodies & Sweatshirts' -> 'hoodie'."""
    leaf = category.rsplit("/", 1)[-1].split("&")[0].strip().lower() if category else ""
    if not leaf:
        return "item"
    if leaf in _NOUN_FIXES:
        return _NOUN_FIXES[leaf]
    if leaf.endswith("s") and leaf not in ("pants", "shorts", "leggings", "glasses") and not leaf.endswith("ss"):
        return leaf[:-1]
    return leaf


def _gender_phrase(gender: str) -> str:
    g = gender.lower()
    return {"men": "for men", "women": "for women", "unisex": "for everyone"}.get(g, f"for {g}" if g else "")


def _join(values: list[str]) -> str:
    values = [v.lower() for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def build_captions(rec: dict[str, Any], attrs: dict[str, list[str]], cfg: CaptionConfig, seed: int) -> list[str]:
    """Natural-language captions naming colour, garment, gender, material and use.

    Training samples one per epoch: varied wording beats a single terse attribute list.
    """
    noun, color, gender = garment_noun(rec["category"]), rec["color"].lower(), _gender_phrase(rec["gender"])
    article = "an" if (color or noun)[0] in "aeiou" else "a"
    head = " ".join(p for p in (article, color, noun, gender) if p)
    facts = []
    for key in cfg.attributes:
        values = attrs.get(key, [])[: cfg.max_attribute_values]
        if not values or cfg.max_attribute_values == 0:
            continue
        if key == "material":
            facts.append(f"made of {_join(values)}")
        elif key == "climate":
            facts.append(f"for {_join(values)} weather")
        elif key == "activity":
            facts.append(f"for {_join(values)}")
        else:
            facts.append(f"{_join(values)} {key}")
    title = rec["title"]
    candidates = [
        f"{head}: {title}",
        ", ".join([head, *facts[:2]]),
        f"{title}, {color + ' ' if color else ''}{noun} {gender}".strip(),
        ", ".join([f"{title} in {color}" if color else title, *facts[1:3]]),
        "photo of " + ", ".join([head, *facts[2:4]]),
    ]
    if cfg.description_chars and rec["description"]:
        line = rec["description"].split("\n")[0]
        excerpt = line if len(line) <= cfg.description_chars else line[: cfg.description_chars].rsplit(" ", 1)[0]
        candidates.append(f"{title}, {head}. {excerpt}")
    rng = int(hashlib.sha1(f"{seed}:{rec['id']}".encode()).hexdigest(), 16)
    first, rest = candidates[0], candidates[1:]
    rest = [rest[(i + rng) % len(rest)] for i in range(len(rest))]
    return [first, *rest][: cfg.num_variants]


def build_product_text(rec: dict[str, Any], attrs: dict[str, list[str]]) -> str:
    """Rich product text (title, gender, colour, category, attributes, description) for text-side retrieval."""
    parts = [rec["title"]]
    line = " ".join(p for p in (rec["gender"], rec["color"], garment_noun(rec["category"])) if p)
    parts.append(line)
    if rec["category"]:
        parts.append(rec["category"].replace("/", " > "))
    parts.extend(f"{k}: {', '.join(v)}" for k, v in sorted(attrs.items()) if v)
    if rec["description"]:
        parts.append(rec["description"])
    return ". ".join(p for p in parts if p)
