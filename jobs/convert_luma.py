"""Write data/luma/catalog.jsonl (mmray's catalog schema) from the shipped Luma tables.

    python -m jobs.convert_luma [--src data/luma] [--out data/luma/catalog.jsonl]

One row per colour variant (variants.jsonl), with the product's description joined in.
"""
from __future__ import annotations

import argparse
import json
import os


def convert(src: str) -> list[dict]:
    products = {p["id"]: p for p in map(json.loads, open(os.path.join(src, "products.jsonl"), encoding="utf-8"))}
    rows = []
    for v in map(json.loads, open(os.path.join(src, "variants.jsonl"), encoding="utf-8")):
        p = products[v["product_id"]]
        rows.append({
            "id": v["id"], "product_id": v["product_id"], "title": v["title"], "description": p["description"],
            "category": v["category"], "gender": v.get("gender") or ("Unisex" if p.get("gender_list") else None),
            "color": v.get("color"), "sizes": v.get("sizes") or [], "tags": p.get("tags") or [],
            "attributes": v.get("attributes") or {}, "price": v.get("price"),
            "images": [f"images/{name}" for name in v["images"]],
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.convert_luma", description=__doc__.split("\n")[0])
    parser.add_argument("--src", default="data/luma")
    parser.add_argument("--out", default="data/luma/catalog.jsonl")
    args = parser.parse_args(argv)
    rows = convert(args.src)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
