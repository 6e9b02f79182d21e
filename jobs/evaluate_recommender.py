"""Evaluate the recommenders on real data and write a report JSON (figures for BENCHMARKS.md "Recommendations").

    nice -n 10 python -m jobs.evaluate_recommender [--config configs/local.yaml] [--out artifacts/recommender_eval.json]

1. UCI Online Retail (`--retail`, ../shared/data/online_retail_uci): leave-last-basket-out over every
   customer with >= 2 purchase baskets; HR@10 and NDCG@10 of popularity, item-item co-occurrence (both
   counted on the training baskets only), our user-vector recommender (`mmray.recommend.recommender`,
   the route's code, `recommend` config as given), RRF(user vector, co-occurrence), SASRec (trained here,
   in process, on the training baskets only with `recommend.sasrec`; ranked by the same route code with
   `ranker: sasrec`) and RRF(SASRec, co-occurrence); the baselines and
   RRF once more with counts from the training baskets dated before the customer's held-out basket only.
2. Luma merchant links (`--links`): Recall@10 of /similar (nearest products by item vector) and of
   complements with category rules learned from the cross-sell links of the other half of the products
   (2-fold over a fixed hash split; rules never see the evaluated product's links), per link type.

Item vectors: no trained model is read; both datasets are embedded with the pretrained all-MiniLM-L6-v2
text tower of `build_model(ModelConfig(kind="lite"))` (mean-pooled 384-d tower features, not the
untrained projection head). UCI items have titles only; Luma items use title, category and description.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

log = logging.getLogger("mmray.evaluate_recommender")
K = 10


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def text_vectors(texts: list[str]) -> np.ndarray:
    """Pretrained MiniLM tower features of `texts` (no trained model exists for these data sets)."""
    from mmray.embedder import pretrained_text_features

    return pretrained_text_features(texts)


def evaluate_baskets(retail_dir: str, rcfg, max_customers: int | None = None) -> dict:
    from mmray.recommend.evaluation import (
        BasketStats,
        CoPurchases,
        cooccurrence_ranking,
        history_items,
        hit_rate_at_k,
        leave_last_basket_out,
        ndcg_at_k,
        popularity_ranking,
        read_baskets,
        rrf,
        train_sequence_ranker,
        user_vector_ranking,
    )
    from mmray.recommend.recommender import ItemSpace, Recommender
    from mmray.recommend.train import TrainingDataError

    items = [r for r in _read_jsonl(os.path.join(retail_dir, "items.jsonl")) if r.get("is_product")]
    ids = [str(r["stock_code"]) for r in items]
    baskets = read_baskets(_read_jsonl(os.path.join(retail_dir, "invoices.jsonl")), set(ids))
    cases, train, dropped = leave_last_basket_out(baskets)
    eligible = len(cases)
    if max_customers is not None and len(cases) > max_customers:  # deterministic: customer id order
        cases = cases[:max_customers]
    stats, co_purchases = BasketStats(train), CoPurchases(train)
    t0 = time.perf_counter()
    vecs = text_vectors([r["title"] or "" for r in items])
    embed_s = time.perf_counter() - t0
    space = ItemSpace(vecs, {"id": ids, "product_id": ids, "title": [r["title"] for r in items],
                             "category": [""] * len(ids)})
    rec = Recommender(space, rcfg.model_copy(update={"ranker": "user_vector", "co_purchase_blend": True}))
    t0 = time.perf_counter()
    try:  # trained on the training baskets only, with the `recommend.sasrec` settings as given
        ranker, losses = train_sequence_ranker(train, space, rcfg.sasrec)
        seq_rec, sasrec_skipped = Recommender(space, rcfg.model_copy(update={"ranker": "sasrec", "co_purchase_blend": True}),
                                              sequence=ranker), None
    except TrainingDataError as e:
        losses, seq_rec, sasrec_skipped = [], None, str(e)
    sasrec_s = time.perf_counter() - t0
    past_stats: dict[str, BasketStats] = {}

    def past(c) -> BasketStats:
        if c.customer not in past_stats:
            past_stats[c.customer] = BasketStats(b for b in train if b.ts < c.ts)
        return past_stats[c.customer]
    rankers = {
        "popularity": lambda c: popularity_ranking(stats, set(history_items(c)), K),
        "co-occurrence": lambda c: cooccurrence_ranking(stats, history_items(c), K),
        "user-vector (ours)": lambda c: user_vector_ranking(rec, c, K),
        "hybrid RRF(user-vector, co-occurrence)": lambda c: rrf(
            [user_vector_ranking(rec, c, 50), cooccurrence_ranking(stats, history_items(c), 50)], K),
        "user-vector + co-purchase, the served blend (ours)": lambda c: user_vector_ranking(rec, c, K, co_purchases),
        **({} if seq_rec is None else {
            "SASRec (ours)": lambda c: user_vector_ranking(seq_rec, c, K),
            "SASRec + co-purchase, the served blend (ours)": lambda c: user_vector_ranking(seq_rec, c, K, co_purchases),
            "hybrid RRF(SASRec, co-occurrence) (ours)": lambda c: rrf(
                [user_vector_ranking(seq_rec, c, 50), cooccurrence_ranking(stats, history_items(c), 50)], K)}),
        # stricter, time-respecting counts: only training baskets dated before the held-out basket
        "popularity (past baskets only)": lambda c: popularity_ranking(past(c), set(history_items(c)), K),
        "co-occurrence (past baskets only)": lambda c: cooccurrence_ranking(past(c), history_items(c), K),
        "hybrid RRF (past baskets only)": lambda c: rrf(
            [user_vector_ranking(rec, c, 50), cooccurrence_ranking(past(c), history_items(c), 50)], K),
    }
    out = {}
    for name, rank in rankers.items():
        hr, nd = [], []
        for c in cases:
            ranked = rank(c)
            if set(ranked) & set(history_items(c)):
                raise AssertionError(f"{name} recommended an item of the history")
            hr.append(hit_rate_at_k(ranked, c.target, K))
            nd.append(ndcg_at_k(ranked, c.target, K))
        out[name] = {"HR@10": float(np.mean(hr)) if hr else None, "NDCG@10": float(np.mean(nd)) if nd else None,
                     "customers_hit": int(sum(hr))}
    return {"dataset": retail_dir, "items": len(ids), "baskets": len(baskets), "training_baskets": len(train),
            "customers_with_2_baskets": eligible + dropped, "dropped_last_basket_only_rebuys": dropped,
            "customers_evaluated": len(cases),
            "mean_target_size": float(np.mean([len(c.target) for c in cases])) if cases else 0.0,
            "mean_history_items": float(np.mean([len(history_items(c)) for c in cases])) if cases else 0.0,
            "embed_s": round(embed_s, 1), "methods": out,
            "sasrec": {"skipped": sasrec_skipped} if seq_rec is None else {
                "train_s": round(sasrec_s, 1), "epochs": len(losses), "first_loss": round(losses[0], 4),
                "final_loss": round(losses[-1], 4), "training_items": len(seq_rec.sequence.offset_of),
                "config": rcfg.sasrec.model_dump()}}


def evaluate_links(catalog_path: str, links_path: str, rcfg) -> dict:
    from mmray.recommend.evaluation import complements_ranking, links_by_source, recall_at_k, similar_ranking, split_products
    from mmray.recommend.recommender import CategoryRules, ItemSpace, Recommender

    catalog = _read_jsonl(catalog_path)
    links = _read_jsonl(links_path)
    texts = [". ".join(x for x in (r.get("title"), r.get("category"), r.get("description")) if x) for r in catalog]
    space = ItemSpace(text_vectors(texts), {"id": [r["id"] for r in catalog], "product_id": [r["product_id"] for r in catalog],
                                            "title": [r["title"] for r in catalog],
                                            "category": [r.get("category") or "" for r in catalog]})
    halves = split_products(space.rows_of_product)
    kinds = {"related": ("related",), "upsell": ("upsell",), "crosssell": ("crosssell",),
             "all": ("related", "upsell", "crosssell")}
    truth = {name: links_by_source(links, ks) for name, ks in kinds.items()}
    scores: dict[str, dict[str, list[float]]] = {m: {n: [] for n in kinds} for m in ("similar", "complements")}
    for fold in range(2):
        train, test = halves[fold], halves[1 - fold]
        rules = CategoryRules.learn((link for link in links if str(link["source"]) in train), space)
        rec = Recommender(space, rcfg, rules)
        for pid in sorted(test):
            sim = similar_ranking(space, pid, K)
            comp = complements_ranking(rec, pid, K)
            for name in kinds:
                targets = truth[name].get(pid)
                if targets:
                    scores["similar"][name].append(recall_at_k(sim, targets, K))
                    scores["complements"][name].append(recall_at_k(comp, targets, K))
    table = {m: {n: {"Recall@10": float(np.mean(v)) if v else None, "products": len(v)} for n, v in per.items()}
             for m, per in scores.items()}
    return {"catalog": catalog_path, "links": links_path, "products": len(space.rows_of_product),
            "split": "2-fold, SHA-256 hash of product id; complements' category rules learned from the cross-sell "
                     "links whose source is in the other half",
            "methods": table}


def main() -> int:
    from mmray.config import load_config
    from mmray.runtime import setup_logging

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--retail", default=os.path.join("..", "shared", "data", "online_retail_uci"))
    p.add_argument("--catalog", default="data/luma/catalog.jsonl")
    p.add_argument("--links", default="data/luma/links.jsonl")
    p.add_argument("--max-customers", type=int, default=None)
    p.add_argument("--out", default="artifacts/recommender_eval.json")
    args = p.parse_args()
    setup_logging()
    rcfg = load_config(args.config).recommend
    t0 = time.perf_counter()
    report = {"k": K, "item_vectors": "pretrained all-MiniLM-L6-v2 text tower features (no trained model)",
              "recommend_config": rcfg.model_dump(),
              "retail": evaluate_baskets(args.retail, rcfg, args.max_customers),
              "luma_links": evaluate_links(args.catalog, args.links, rcfg)}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    r = report["retail"]
    print(f"UCI Online Retail, leave-last-basket-out, {r['customers_evaluated']} customers "
          f"({r['dropped_last_basket_only_rebuys']} dropped: last basket only re-buys)")
    print(f"{'method':42s} {'HR@10':>7s} {'NDCG@10':>8s} {'hit':>5s}")
    for name, m in r["methods"].items():
        print(f"{name:42s} {m['HR@10']:7.3f} {m['NDCG@10']:8.3f} {m['customers_hit']:5d}")
    print(f"SASRec: {r['sasrec']}")
    print("\nLuma merchant links, Recall@10 (products with links of that type)")
    lk = report["luma_links"]["methods"]
    print(f"{'method':14s} " + " ".join(f"{n:>16s}" for n in lk["similar"]))
    for m, per in lk.items():
        print(f"{m:14s} " + " ".join(f"{per[n]['Recall@10']:9.3f} (n={per[n]['products']:3d})" for n in per))
    print(f"\nreport: {args.out}  ({report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
