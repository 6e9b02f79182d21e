"""Product copy per engine on a sample of the shipped catalog: attribute coverage, unsupported-claim
rate before and after the guardrails, distinct-2 across variants, length compliance, embedding similarity
to the merchant's own description of the product (cosine of the pretrained MiniLM text tower's mean-pooled
features, the tower the dual encoder starts from), seconds per product.

    nice -n 10 python -m benchmarks.copy --engine grounded --products 20 --variants 3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mmray.config.copy import CopyConfig
from mmray.copy import Catalog, CopyRequest, Copywriter
from mmray.copy.facts import split_sentences

CATALOG = Path(__file__).resolve().parents[1] / "data" / "luma" / "catalog.jsonl"


def distinct_2(texts: list[str]) -> float:
    grams = [tuple(w[i:i + 2]) for t in texts for w in [t.lower().split()] for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def merchant_similarity(pairs: list[tuple[str, str]]) -> float:
    """Mean cosine between each output and the merchant's description (pretrained MiniLM tower features)."""
    if not pairs:
        return float("nan")
    from mmray.embedder import pretrained_text_features

    feats = pretrained_text_features([t for pair in pairs for t in pair], batch_size=32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return float(np.mean(np.sum(feats[0::2] * feats[1::2], axis=1)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", default="grounded")
    p.add_argument("--products", type=int, default=20)
    p.add_argument("--variants", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=160)
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in CATALOG.read_text().splitlines() if line.strip()]
    for r in rows:
        r["attributes_json"] = json.dumps(r.pop("attributes", None) or {})
    catalog = Catalog(rows)
    cfg = CopyConfig(engine=a.engine, max_tokens=a.max_tokens)
    cw = Copywriter(catalog, cfg)
    pids = catalog.product_ids()[:: max(1, len(catalog.product_ids()) // a.products)][: a.products]
    units_before = flagged_before = units_after = flagged_after = 0
    covered = facts_total = within = total = 0
    d2, pairs, start = [], [], time.perf_counter()
    for pid in pids:
        out = cw.write(CopyRequest(product_id=pid, kinds=["description"], n_variants=a.variants))
        facts = catalog.facts(pid)
        ev = cw.guardrails.evidence(facts)
        limits = cfg.channels[cfg.default_channel]
        variants = out["outputs"][0]["variants"]
        for v in variants:
            kept = split_sentences(v["text"])
            units_before += len(kept) + len(v["removed"])
            flagged_before += sum(1 for r in v["removed"] if not r["reason"].startswith("length"))
            units_after += len(kept)
            flagged_after += sum(1 for s in kept if cw.guardrails.unsupported(s, ev) or cw.guardrails.banned_claims(s))
            values = [*facts.colors, *[x for vals in facts.attributes.values() for x in vals]]
            facts_total += len(values)
            covered += sum(1 for x in values if x.lower() in v["text"].lower())
            total += 1
            within += v["passed"] and len(v["text"]) <= limits.description_chars
        d2.append(distinct_2([v["text"] for v in variants if v["text"]]))
        merchant = catalog.facts(pid).description
        pairs += [(v["text"], merchant) for v in variants if v["text"] and merchant]
    secs = (time.perf_counter() - start) / len(pids)
    similarity = merchant_similarity(pairs)
    print(f"engine={a.engine} products={len(pids)} variants={a.variants}")
    print(f"attribute coverage {covered / max(facts_total, 1):.3f}")
    print(f"unsupported-claim rate before guardrails {flagged_before / max(units_before, 1):.3f} (sentences)")
    print(f"unsupported-claim rate after guardrails {flagged_after / max(units_after, 1):.3f}")
    print(f"distinct-2 across variants {sum(d2) / len(d2):.3f}")
    print(f"length compliance (passed and within the web limit) {within / max(total, 1):.3f}")
    print(f"similarity to the merchant's description {similarity:.3f} (mean cosine over {len(pairs)} outputs)")
    print(f"seconds per product {secs:.3f}")


if __name__ == "__main__":
    main()
