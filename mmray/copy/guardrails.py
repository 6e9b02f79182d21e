"""Guardrails: every claim in a piece of copy is checked against the product's catalog facts.

The claim vocabulary comes from the catalog's own data — its colours, audiences, category nouns,
sizes and every attribute's values — plus built-in word lists for colours, materials, audiences,
features and price claims that a catalog may not name at all (a model can invent "red" or "silk"
for a shop that sells neither). A mention is supported when the product's facts hold it:

  colour, audience   the product's colour / gender facet, or its title; its description only when
                     the product has no such facet (a black variant is not "gray" because its
                     description says "gray heather")
  size               a listed size (letter sizes, size words such as "petite" need evidence)
  number, price      any number must appear in the product's facts; a price must be its price
  material, category, attribute values, features
                     the product's attribute values, category path, title, description or tags

Unsupported or banned sentences (bullets) are removed with their reason, or the variant is
rejected (`GuardrailConfig.on_unsupported`, and always for a title). Text addressed to a model
(an echoed instruction, a URL) rejects the variant: its engine was steered by its input.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmray.catalog.captions import singular
from mmray.config.copy import ChannelLimits, GuardrailConfig
from mmray.copy.facts import INSTRUCTION_RE, Catalog, ProductFacts, split_sentences

COLOURS = ("black white gray grey red blue green yellow orange purple pink brown beige navy teal turquoise maroon "
           "burgundy violet indigo khaki ivory charcoal cream silver gold golden tan olive lavender magenta cyan "
           "crimson scarlet coral mint aqua fuchsia mauve peach rust multicolor multicolored multicolour").split()
MATERIALS = ("cotton wool polyester nylon spandex elastane lycra leather suede silk linen denim fleece cashmere "
             "bamboo hemp rayon viscose acrylic rubber foam plastic metal steel aluminum aluminium wood wooden glass "
             "ceramic canvas mesh microfiber microfibre satin velvet jersey merino neoprene silicone latex cork "
             "bronze titanium copper brass polyurethane lyocell modal tencel acetate fur synthetic "
             "gore-tex cordura kevlar").split() + ["organic cotton", "faux fur", "vegan leather", "stainless steel"]
# audience word -> canonical audience
AUDIENCES = {"men": "men", "man": "men", "male": "men", "gentleman": "men", "gentlemen": "men", "guy": "men",
             "women": "women", "woman": "women", "female": "women", "lady": "women", "ladie": "women",
             "kid": "kids", "child": "kids", "children": "kids", "toddler": "kids", "baby": "kids", "infant": "kids",
             "boy": "kids", "girl": "kids", "junior": "kids", "youth": "kids", "teen": "kids", "teenager": "kids",
             "unisex": "unisex"}
FEATURES = ["waterproof", "water resistant", "water repellent", "windproof", "wind resistant", "breathable",
            "moisture wicking", "wicking", "sweat wicking", "quick dry", "quick drying", "fast drying",
            "odor resistant", "anti odor", "odor control", "antimicrobial", "antibacterial", "uv protection", "upf",
            "sun protection", "machine washable", "machine wash", "hand wash", "insulated", "thermal", "reflective",
            "stretch", "stretchy", "four way stretch", "lightweight", "ultralight", "durable", "wrinkle free",
            "wrinkle resistant", "eco friendly", "organic", "recycled", "sustainable", "vegan", "handmade",
            "adjustable", "pocket", "zipper", "zip", "hood", "hooded", "drawstring", "padded", "non slip", "anti slip",
            "shockproof", "wireless", "bluetooth", "rechargeable", "gluten free", "sugar free", "dairy free", "non gmo",
            "hypoallergenic", "dishwasher safe", "bpa free", "seamless", "cushioned", "ventilated", "compression",
            "lockable", "certified", "award winning", "best seller", "bestselling", "patented", "imported",
            "made in", "fair trade", "handcrafted"]
SIZE_WORDS = ["petite", "plus size", "oversized", "one size", "big and tall", "extended size", "true to size",
              "slim fit", "relaxed fit", "regular fit", "tall"]
SALE_WORDS = ["sale", "discount", "discounted", "clearance", "deal", "bargain", "cheap", "cheapest", "markdown",
              "percent off"]
PRICE_PHRASES = ["free shipping", "lowest price", "best price", "half price", "price drop", "limited time",
                 "buy one get one", "bogo", "free gift", "free return"]
_SALE_EVIDENCE = {"sale", "discount", "clearance", "promotion"}
_SKIP_VALUES = {"all", "none", "other", "yes", "no", "na", "n", "one", "new", "misc", "various", "standard"}

HEALTH = [r"\bcure[sd]?\b", r"\bheal(s|ing)?\b", r"\btreat(s|ment)?\b.{0,25}\b(disease|condition|pain|injur|illness|symptom)",
          r"\bprevents?\b.{0,25}\b(disease|injur|illness|cancer|infection)", r"\btherapeutic\b", r"\bmedical(ly)?\b",
          r"\bclinically\b", r"\bfda\b", r"\bdoctors?\b", r"\bphysicians?\b", r"\bpain[- ]relief\b",
          r"\brelieves?\b.{0,15}\b(pain|stress|ache)", r"\bweight[- ]loss\b", r"\blose\s+weight\b", r"\bburns?\s+fat\b",
          r"\bfat[- ]burning\b", r"\bdetox", r"\bimmun(e|ity)\b", r"\banti[- ]inflammatory\b",
          r"\b(cancer|diabetes|arthritis|depression|anxiety|asthma|insomnia)\b", r"\bhealth\s+benefits?\b",
          r"\borthop(a)?edic\b", r"\bposture[- ]correct"]
GUARANTEES = [r"\bguarantee[sd]?\b", r"\bwarrant(y|ies|ied)\b", r"\bnever\s+(fades?|tears?|breaks?|wears?|rips?|shrinks?|pills?|fails?)\b",
              r"\b(100|one hundred)\s*(%|percent)\s*(satisfaction|guaranteed|safe|effective|waterproof|proof)",
              r"\bunbreakable\b", r"\bindestructible\b", r"\brisk[- ]free\b", r"\bforever\b", r"\bmoney[- ]back\b",
              r"\b(best|#1|number one|no\.?\s*1)\b.{0,25}\b(in the world|on the market|ever made)\b",
              r"\bworld'?s\s+best\b", r"\blasts?\s+a\s+lifetime\b", r"\bperfect\s+for\s+everyone\b"]
LEAK_RE = re.compile(r"https?://|\bwww\.|\b[\w.+-]+@[\w-]+\.[a-z]{2,}\b|\bproduct[_ ]facts\b|\bmerchant_description\b"
                     r"|\bstyle exemplars?\b|\bjson\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z0-9]+")
_NUMBER_RE = re.compile(r"(?<![\w.])([$€£]\s?)?(\d+(?:[.,]\d+)?)(\s*(?:%|percent\b))?(\s*(?:usd|eur|gbp|dollars?|euros?|pounds?)\b)?",
                        re.IGNORECASE)
_LETTER_SIZE_RE = re.compile(r"(?<![\w-])(XXXS|XXS|XS|S|M|L|XL|XXL|XXXL|[2-6]XL)(?![\w-])")
_SIZE_CONTEXT_RE = re.compile(r"\bsizes?\b|\b(XXS|XS|S|M|L|XL)\s*(-|–|to|/|,|and)\s*(XXS|XS|S|M|L|XL|XXL|[2-6]XL)\b", re.IGNORECASE)


def norm(word: str) -> str:
    """One token as the vocabulary keeps it: singular, light stem (-ing, -ed), grey -> gray."""
    w = singular(word)
    if w == "grey":
        return "gray"
    for suffix in ("ing", "ed"):
        if len(w) > 5 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def words(text: str) -> list[str]:
    text = (text or "").lower().replace("™", "").replace("®", "").replace("©", "")
    return [norm(w) for w in _WORD_RE.findall(text)]


def _contains(seq: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(seq[i:i + n]) == phrase for i in range(len(seq) - n + 1))


def _numbers(text: str) -> set[float]:
    return {float(m.group(2).replace(",", ".")) for m in _NUMBER_RE.finditer(text or "")}


@dataclass
class Verdict:
    """One variant after the guardrails."""

    text: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    items: list[str] | None = None  # bullets: the kept bullet points

    def as_dict(self) -> dict:
        out = {"text": self.text, "passed": self.passed, "reasons": self.reasons, "removed": self.removed}
        if self.items is not None:
            out["items"] = self.items
        return out


class Evidence:
    """A product's facts as token sequences, per facet, for fast claim checks."""

    def __init__(self, facts: ProductFacts, material_attributes: set[str]):
        self.facts = facts
        self.title = words(facts.title)
        self.description = words(facts.description)
        self.colors = [words(c) for c in facts.colors]
        self.audience = {AUDIENCES.get(w, w) for w in words(facts.gender)}
        if "unisex" in self.audience:
            self.audience |= {"men", "women"}
        self.sizes = {s.strip().upper() for s in facts.sizes}
        self.has_material = any(name.lower() in material_attributes for name in facts.attributes)
        values = [words(v) for vals in facts.attributes.values() for v in vals]
        self.attribute_values = values
        self.texts = [self.title, self.description, words(facts.category), *values, *[words(t) for t in facts.tags],
                      *[words(s) for s in facts.sizes], *self.colors]
        self.tokens = {w for t in self.texts for w in t}
        catalog_text = " ".join([facts.title, facts.description, *facts.sizes,
                                 *[v for vals in facts.attributes.values() for v in vals]])
        self.numbers = _numbers(catalog_text)
        self.prices = {round(p, 2) for p in (facts.price_min, facts.price_max) if p is not None}

    def anywhere(self, phrase: tuple[str, ...]) -> bool:
        return any(_contains(t, phrase) for t in self.texts)


class Guardrails:
    """Claim checks for one catalog (its vocabulary) and one policy."""

    def __init__(self, catalog: Catalog, cfg: GuardrailConfig):
        self.cfg = cfg
        self.material_attributes = {a.lower() for a in cfg.material_attributes}
        self.phrases: dict[tuple[str, ...], set[str]] = {}
        for c in COLOURS:
            self._add(c, "colour")
        for m in MATERIALS:
            self._add(m, "material")
        for w in AUDIENCES:
            self._add(w, "audience")
        for f in [*FEATURES, *cfg.extra_features]:
            self._add(f, "feature")
        for s in SIZE_WORDS:
            self._add(s, "size")
        for p in [*SALE_WORDS, *PRICE_PHRASES]:
            self._add(p, "price")
        for row in catalog.rows:  # the catalog's own facets
            self._add(row.get("color") or "", "colour")
            for w in words(row.get("gender") or ""):
                self._add(w, "audience")
            leaf = (row.get("category") or "").split("/")[-1]
            for part in re.split(r"\s*(?:&|,|\+|\band\b)\s*", leaf.lower()):
                if part.strip():
                    self._add(part, "category")
                    self._add(part.split()[-1], "category")
            for name, values in _attributes(row).items():
                facet = "material" if name.lower() in self.material_attributes else f"attribute:{name}"
                for v in values:
                    self._add(v, facet)
        self.max_len = max(len(p) for p in self.phrases)
        banned = []
        if cfg.banned.health:
            banned += [(re.compile(p, re.IGNORECASE), "health or medical claim") for p in HEALTH]
        if cfg.banned.guarantees:
            banned += [(re.compile(p, re.IGNORECASE), "absolute guarantee") for p in GUARANTEES]
        banned += [(re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)", re.IGNORECASE), "competitor name")
                   for name in cfg.banned.competitors if name.strip()]
        banned += [(re.compile(p, re.IGNORECASE), "banned pattern") for p in cfg.banned.patterns]
        self.banned = banned

    def _add(self, text: str, facet: str) -> None:
        phrase = tuple(words(text))
        if not phrase or (len(phrase) == 1 and (phrase[0] in _SKIP_VALUES or len(phrase[0]) < 3
                                                or phrase[0].isdigit())):
            return
        self.phrases.setdefault(phrase, set()).add(facet)

    def evidence(self, facts: ProductFacts) -> Evidence:
        return Evidence(facts, self.material_attributes)

    # ------------------------------------------------------------------ claims
    def mentions(self, text: str) -> list[tuple[tuple[str, ...], set[str]]]:
        """Vocabulary phrases in `text`, longest match first, left to right."""
        toks, out, i = words(text), [], 0
        while i < len(toks):
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                phrase = tuple(toks[i:i + n])
                if phrase in self.phrases:
                    out.append((phrase, self.phrases[phrase]))
                    i += n
                    break
            else:
                i += 1
        return out

    def _supported(self, phrase: tuple[str, ...], facet: str, ev: Evidence) -> bool:
        in_title = _contains(ev.title, phrase)
        if facet == "colour":
            return in_title or any(_contains(c, phrase) for c in ev.colors) or (
                not ev.colors and _contains(ev.description, phrase))
        if facet == "audience":
            canon = {AUDIENCES.get(w, w) for w in phrase}
            return in_title or canon <= ev.audience or (not ev.audience and _contains(ev.description, phrase))
        if facet == "price":
            if phrase in {tuple(words(w)) for w in SALE_WORDS}:
                return bool(ev.tokens & _SALE_EVIDENCE)
            return ev.anywhere(phrase)
        if facet == "material" and ev.has_material:
            return in_title or any(_contains(v, phrase) for v in ev.attribute_values)
        return ev.anywhere(phrase)

    def unsupported(self, text: str, ev: Evidence) -> list[str]:
        """Why `text` (one sentence) claims more than the facts hold; [] when every claim is backed."""
        reasons = []
        for phrase, facets in self.mentions(text):
            if not any(self._supported(phrase, f, ev) for f in facets):
                reasons.append(f"unsupported {sorted(facets)[0]}: {' '.join(phrase)!r}")
        for m in _NUMBER_RE.finditer(text):
            value = float(m.group(2).replace(",", "."))
            is_price = bool(m.group(1) or m.group(4))
            if is_price and round(value, 2) not in ev.prices:
                reasons.append(f"unsupported price: {m.group(0).strip()!r}")
            elif not is_price and value not in ev.numbers and round(value, 2) not in ev.prices:
                reasons.append(f"unsupported number: {m.group(0).strip()!r}")
        for m in _LETTER_SIZE_RE.finditer(text):
            size = m.group(1)
            if len(size) == 1 and not _SIZE_CONTEXT_RE.search(text):
                continue  # a lone capital S/M/L outside any size context is not a size
            if size not in ev.sizes:
                reasons.append(f"unsupported size: {size!r}")
        return reasons

    def banned_claims(self, text: str) -> list[str]:
        return [f"{why}: {m.group(0)!r}" for rx, why in self.banned if (m := rx.search(text))]

    @staticmethod
    def steered(text: str) -> list[str]:
        """Text addressed to or leaked from a prompt: an instruction, a URL or e-mail, prompt field names."""
        out = []
        if m := INSTRUCTION_RE.search(text):
            out.append(f"instruction-like text: {m.group(0)!r}")
        if m := LEAK_RE.search(text):
            out.append(f"link or prompt text: {m.group(0)!r}")
        return out

    # ------------------------------------------------------------------ verdicts
    def check(self, kind: str, draft: str | list[str], facts: ProductFacts, limits: ChannelLimits,
              ev: Evidence | None = None) -> Verdict:
        """The guarded variant of one draft of `kind` (title, description, ad: text; bullets: a list)."""
        ev = ev or self.evidence(facts)
        if kind == "bullets":
            units = [b.strip().lstrip("-•*· ").strip() for b in (draft if isinstance(draft, list) else str(draft).splitlines())]
        elif kind == "title":
            units = [" ".join(str(draft).split())]
        else:
            units = split_sentences(" ".join(str(draft).split()))
        units = [u for u in units if u]
        kept, removed, reasons, reject = [], [], [], []
        for unit in units:
            if steer := self.steered(unit):
                reject += steer
                removed.append({"text": unit, "reason": "; ".join(steer)})
                continue
            why = self.banned_claims(unit) + self.unsupported(unit, ev)
            if why:
                removed.append({"text": unit, "reason": "; ".join(why)})
                reasons += why
                if kind == "title" or self.cfg.on_unsupported == "reject":
                    reject += why
            else:
                kept.append(unit)
        kept = self._fit(kind, kept, limits, removed, reject)
        reasons = _unique(reasons + reject)
        if not kept and not reject:
            reject.append("nothing left after the guardrails" if units else "empty output")
            reasons.append(reject[-1])
        if reject:
            return Verdict("", False, _unique(reasons), removed, [] if kind == "bullets" else None)
        text = "\n".join(kept) if kind == "bullets" else " ".join(kept)
        return Verdict(text, True, reasons, removed, kept if kind == "bullets" else None)

    @staticmethod
    def _fit(kind: str, kept: list[str], limits: ChannelLimits, removed: list, reject: list) -> list[str]:
        """Channel length limits: trailing sentences and over-long bullets are dropped; a title or
        ad that still does not fit is rejected."""
        if kind == "bullets":
            out = []
            for b in kept:
                if len(b) > limits.bullet_chars:
                    removed.append({"text": b, "reason": f"length: bullet over {limits.bullet_chars} characters"})
                elif len(out) >= limits.max_bullets:
                    removed.append({"text": b, "reason": f"length: more than {limits.max_bullets} bullets"})
                else:
                    out.append(b)
            return out
        cap = {"title": limits.title_chars, "description": limits.description_chars, "ad": limits.ad_chars}[kind]
        out = list(kept)
        while out and len(" ".join(out)) > cap and len(out) > 1:
            removed.append({"text": out.pop(), "reason": f"length: {kind} over {cap} characters"})
        if out and len(" ".join(out)) > cap:
            reject.append(f"length: {kind} over {cap} characters")
        return out


def _attributes(row: dict) -> dict[str, list[str]]:
    import json

    return {k: [str(x) for x in v or []] for k, v in json.loads(row.get("attributes_json") or "{}").items()}


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
