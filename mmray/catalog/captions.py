"""Text written from catalog facts: training captions and the product text used for retrieval.

Only facets a row has are named: the category (its leaf as a singular noun, the levels above it),
any attribute (phrased by `CaptionConfig`), and colour and audience (`gender`) where present. The
held-out queries (`mmray.evalset`) use the same noun, audience and attribute phrasing.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from mmray.config import CaptionConfig

# Plural-only words (and words whose -s is not a plural) that stay as they are.
_INVARIANT = {"pants", "shorts", "leggings", "glasses", "sunglasses", "eyeglasses", "jeans", "trousers", "tights",
              "scissors", "headphones", "earphones", "binoculars", "pliers", "tongs", "goggles", "overalls",
              "pajamas", "pyjamas", "briefs", "boxers", "sweatpants", "joggers", "chinos", "slacks", "clothes",
              "oats", "news", "series", "species", "electronics", "cosmetics", "athletics", "gymnastics", "tennis",
              "chassis", "trellis", "iris", "axis", "pelvis"}
# Singulars in -ie, whose plural -ies is not -y ("berries" -> "berry" but "hoodies" -> "hoodie").
_IE_SINGULARS = {"hoodie", "cookie", "movie", "beanie", "brownie", "smoothie", "onesie", "bootie", "veggie",
                 "selfie", "zombie", "rookie", "calorie", "goalie", "lingerie", "necktie", "bowtie", "pixie",
                 "birdie", "magpie", "sweetie", "genie"}
_IRREGULAR = {"knives": "knife", "leaves": "leaf", "loaves": "loaf", "shelves": "shelf", "halves": "half",
              "scarves": "scarf", "wolves": "wolf", "calves": "calf", "children": "child", "feet": "foot",
              "teeth": "tooth", "mice": "mouse", "geese": "goose", "tomatoes": "tomato", "potatoes": "potato",
              "mangoes": "mango", "heroes": "hero", "echoes": "echo", "volcanoes": "volcano", "dominoes": "domino",
              "quiches": "quiche", "brioches": "brioche", "niches": "niche", "caches": "cache", "lenses": "lens",
              "canvases": "canvas", "buses": "bus", "gases": "gas"}
_LEAF_SPLIT_RE = re.compile(r"\s*(?:&|,|\+|\band\b)\s*")  # "Hoodies & Sweatshirts" -> "Hoodies"
_EVERYONE = {"unisex", "all", "everyone", "any"}


def singular(word: str) -> str:
    """English singular of one lower-case word: apples -> apple, berries -> berry, boxes -> box."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _INVARIANT or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "sis")):
        return word
    if word.endswith("ies"):
        return word[:-1] if len(word) <= 4 or word[:-1] in _IE_SINGULARS else word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]
    return word[:-1]


def category_noun(category: str, nouns: dict[str, str] | None = None) -> str:
    """A singular noun for the leaf category: 'Fruit/Apples' -> 'apple', 'Men/Tops/Hoodies & Sweatshirts' ->
    'hoodie'; `nouns` (`CaptionConfig.nouns`) overrides a leaf or the last levels of the path."""
    path = [level.strip().lower() for level in (category or "").split("/") if level.strip()]
    if not path:
        return "item"
    overrides = CaptionConfig().nouns if nouns is None else nouns
    for n in range(len(path), 0, -1):  # the longest matching trailing path wins
        if (key := "/".join(path[-n:])) in overrides:
            return overrides[key]
    words = _LEAF_SPLIT_RE.split(path[-1])[0].split()
    if not words:
        return "item"
    return " ".join([*words[:-1], singular(words[-1])])


def category_context(category: str, gender: str = "") -> str:
    """The levels above the leaf, lower case, less any that only repeat the audience: 'Fruit/Apple' -> 'fruit'."""
    levels = [level.strip().lower() for level in (category or "").split("/") if level.strip()][:-1]
    return " ".join(level for level in levels if level != gender.lower())


def audience_phrase(gender: str, everyone: str = "for everyone") -> str:
    """'Men' -> 'for men', 'Kids' -> 'for kids', 'Unisex' -> `everyone`, '' -> ''."""
    g = gender.strip().lower()
    return everyone if g in _EVERYONE else f"for {g}" if g else ""


def attribute_phrase(name: str, values: list[str], cfg: CaptionConfig) -> str:
    """One attribute as words, from `cfg`: ('material', ['Cotton', 'Wool']) -> 'made of cotton and wool'."""
    template = cfg.attribute_phrases.get(name.lower(), cfg.attribute_phrase)
    return template.format(value=_join(values), name=name.replace("_", " ").lower()).strip()


def caption_attributes(attrs: dict[str, list[str]], cfg: CaptionConfig) -> list[str]:
    """The attribute names to name, in order: `cfg.attributes` where set, else the row's own order."""
    names = list(attrs) if cfg.attributes is None else cfg.attributes
    return [name for name in names if attrs.get(name)]


def _join(values: list[str]) -> str:
    values = [v.lower() for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def build_captions(rec: dict[str, Any], attrs: dict[str, list[str]], cfg: CaptionConfig, seed: int) -> list[str]:
    """Natural-language captions naming the category, colour, audience and attributes a row has.

    Training samples one per epoch: varied wording beats a single terse attribute list.
    """
    noun, color = category_noun(rec["category"], cfg.nouns), rec["color"].lower()
    gender = audience_phrase(rec["gender"])
    head = " ".join(p for p in (_article(color or noun), color, noun, gender) if p)
    facts = []
    if cfg.max_attribute_values:
        facts = [attribute_phrase(name, attrs[name][: cfg.max_attribute_values], cfg)
                 for name in caption_attributes(attrs, cfg)]
    if context := category_context(rec["category"], rec["gender"]):
        facts.append(context)  # last: attributes say more about one product than its department
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


def build_product_text(rec: dict[str, Any], attrs: dict[str, list[str]], cfg: CaptionConfig | None = None) -> str:
    """Rich product text (title, audience, colour, category, attributes, description) for text-side retrieval."""
    cfg = cfg or CaptionConfig()
    parts = [rec["title"]]
    line = " ".join(p for p in (rec["gender"], rec["color"], category_noun(rec["category"], cfg.nouns)) if p)
    parts.append(line)
    if rec["category"]:
        parts.append(rec["category"].replace("/", " > "))
    names = sorted(attrs) if cfg.attributes is None else caption_attributes(attrs, cfg)
    parts.extend(f"{k}: {', '.join(attrs[k])}" for k in names if attrs.get(k))
    if rec["description"]:
        parts.append(rec["description"])
    return ". ".join(p for p in parts if p)
