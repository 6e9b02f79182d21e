"""Training lists, the Ray Train loop of a fusion head, held-out evaluation, publishing.

Training lists (`build_lists`), from training products only:
  queries   the held-out query writer (`mmray.evalset.build_queries`) and the shopper-style writer
            (`mmray.rerank.queries`) run over the *training* items, plus each item's first caption
            (relevant: its own product's items, grade 2)
  candidates (list_size per query) its grade-2 items first (one or two), then mined hard negatives:
            `hard_negatives` each of same category / other colour, same colour / other category,
            nearest image of another product (near-duplicate photos), then the index's own top hits
            (hybrid search over the training rows) until the list is full
  gains     2^grade - 1 (grades by facet match, as the evaluation grades)
Loss: listwise softmax cross-entropy over each list (`heads.listwise_loss`).

Evaluation (`evaluate_queries`): each query ranks the held-out items of the index (every other row
excluded), top `top_k` from the retriever, by the bi-encoder alone, hybrid (vector + BM25) and each
head reranking hybrid's top_k; nDCG@10 (gains 2^grade - 1) and R@1 (share of queries whose first
result has grade 2).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from mmray.config import MmrayConfig
from mmray.evalset import EvalQuery, build_queries, item_facets
from mmray.metrics import hit_rate_at_k, ndcg_at_k
from mmray.rerank.explain import SCALAR_FEATURES, FactMatcher
from mmray.rerank.features import ItemFeatures, query_tokens
from mmray.rerank.heads import build_head, listwise_loss
from mmray.rerank.queries import shopper_queries
from mmray.training.fit import fit_on_workers

log = logging.getLogger(__name__)


def caption_queries(items: list[dict]) -> list[EvalQuery]:
    """Each item's first caption, relevant: the items of its product (grade 2)."""
    by_product: dict[str, list[str]] = {}
    for it in items:
        by_product.setdefault(it["product_id"], []).append(it["id"])
    out = []
    for it in items:
        caps = list(it.get("captions") or [])
        if caps:
            out.append(EvalQuery(caps[0], {}, {i: 2 for i in by_product[it["product_id"]]}))
    return out


def build_lists(retriever, embedder, items: list[dict], queries: list[EvalQuery], list_size: int,
                hard_negatives: int, hybrid: bool, seed: int) -> dict[str, np.ndarray]:
    """(Q, L) candidate rows, gains and validity for `queries` over the index rows of `items`."""
    rng = np.random.default_rng(seed)
    rows = np.array([retriever.row_of[it["id"]] for it in items])
    allowed = np.zeros(len(retriever), dtype=bool)
    allowed[rows] = True
    others = np.flatnonzero(~allowed).tolist()
    facets = {retriever.row_of[it["id"]]: item_facets(it) for it in items}
    product = retriever.meta["product_id"]
    vectors = embedder.embed_texts([q.text for q in queries])
    cand = np.zeros((len(queries), list_size), dtype=np.int64)
    gains = np.zeros((len(queries), list_size), dtype=np.float32)
    valid = np.zeros((len(queries), list_size), dtype=bool)
    for i, q in enumerate(queries):
        grade = {retriever.row_of[item_id]: g for item_id, g in q.relevance.items() if item_id in retriever.row_of}
        picked: list[int] = []

        def take(pool, n, picked=picked):
            for r in pool:
                if n <= 0 or len(picked) >= list_size:
                    return
                if allowed[r] and r not in picked:
                    picked.append(int(r))
                    n -= 1
        best = [r for r, g in grade.items() if g == 2]
        take(rng.permutation(best).tolist(), 2)
        if picked and hard_negatives:
            f0 = facets[picked[0]]
            same_cat = [r for r, f in facets.items() if f["noun"] == f0["noun"] and f["color"] != f0["color"]]
            same_col = [r for r, f in facets.items() if f["color"] == f0["color"] and f["noun"] != f0["noun"]]
            take(rng.permutation(same_cat).tolist(), hard_negatives)
            take(rng.permutation(same_col).tolist(), hard_negatives)
            sims = retriever.vectors[rows] @ retriever.vectors[picked[0]]
            near = [int(r) for r in rows[np.argsort(-sims)] if product[r] != product[picked[0]]]
            take(near, hard_negatives)
        hits = retriever.search(vectors[i], list_size * 2, query_text=q.text, hybrid=hybrid, collapse=False,
                                exclude_rows=others)
        take([h.row for h in hits], list_size)
        take(rng.permutation(rows).tolist(), list_size)  # a corpus smaller than the list: all of it
        n = len(picked)
        cand[i, :n] = picked
        gains[i, :n] = [2.0 ** grade.get(r, 0) - 1 for r in picked]
        valid[i, :n] = True
    return {"rows": cand, "gains": gains, "valid": valid}


def list_inputs(model, texts: list[str], lists: dict, retriever, facts: FactMatcher, max_tokens: int) -> dict:
    """Everything a head needs per training list except the item features (gathered per batch)."""
    q_tokens, q_mask = query_tokens(model, texts, max_tokens)
    q_vec = torch.nn.functional.normalize(
        (q_tokens * q_mask.unsqueeze(-1)).sum(1) / q_mask.sum(1, keepdim=True).clamp(min=1), dim=-1)
    rows = lists["rows"]
    cos = np.einsum("qle,qe->ql", retriever.vectors[rows], q_vec.numpy())
    scalars = np.stack([facts.features(t, rows[i].tolist(), cos[i])[0] for i, t in enumerate(texts)])
    return {"q_tokens": q_tokens.numpy(), "q_mask": q_mask.numpy(), "q_vec": q_vec.numpy(),
            "scalars": scalars.astype(np.float32), **lists}


def batch_tensors(data: dict, idx: np.ndarray, features: ItemFeatures) -> tuple[dict, torch.Tensor, torch.Tensor]:
    rows = data["rows"][idx]
    b, k = rows.shape
    item = features.take(rows.reshape(-1))
    inputs = {"q_tokens": torch.from_numpy(data["q_tokens"][idx]), "q_mask": torch.from_numpy(data["q_mask"][idx]),
              "q_vec": torch.from_numpy(data["q_vec"][idx]),
              "regions": item["regions"].view(b, k, *item["regions"].shape[1:]),
              "has_image": item["has_image"].view(b, k),
              "tokens": item["tokens"].view(b, k, *item["tokens"].shape[1:]),
              "token_mask": item["token_mask"].view(b, k, -1),
              "scalars": torch.from_numpy(data["scalars"][idx])}
    return inputs, torch.from_numpy(data["gains"][idx]), torch.from_numpy(data["valid"][idx])


def fit_head(head, data: dict, features: ItemFeatures, epochs: int, lr: float, weight_decay: float,
             batch_size: int, seed: int, report=None) -> list[float]:
    """Train `head` in place on the lists in `data`; returns the mean loss of each epoch."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    n = len(data["rows"])
    history = []
    head.train()
    for epoch in range(epochs):
        total, steps = 0.0, 0
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            inputs, gains, valid = batch_tensors(data, idx, features)
            scores, _ = head(**inputs)
            loss = listwise_loss(scores, gains, valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        history.append(total / max(steps, 1))
        if report is not None:
            report(epoch, history[-1])
    head.eval()
    return history


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: fit the head (DDP across workers, each on its shard of the lists), report
    the loss per epoch; rank 0 saves the final head in the reported checkpoint."""
    import os
    import tempfile

    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, config.get("threads", 1)))
    data = {k: v[rank::world] for k, v in config["data"].items()}
    features = config["features"].as_float32()  # gathered every step: convert from fp16 once
    head = build_head(config["head"], config["embed_dim"], len(SCALAR_FEATURES), config["hidden"], config["seed"])
    model = ray.train.torch.prepare_model(head) if world > 1 else head
    losses = []

    def report(epoch, loss):
        losses.append(loss)
        if epoch < config["epochs"] - 1:
            ray.train.report({"epoch": epoch, "loss": loss})
    fit_head(model, data, features, config["epochs"], config["lr"], config["weight_decay"], config["batch_size"],
             config["seed"] + rank, report)
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            torch.save(head.state_dict(), os.path.join(folder, "head.pt"))
        ray.train.report({"epoch": config["epochs"] - 1, "loss": losses[-1], "history": losses},
                         checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)


# --------------------------------------------------------------------------- evaluation


def ranked_candidates(retriever, embedder, queries: list[EvalQuery], corpus_ids: list[str], top_k: int
                      ) -> dict[str, list[list[int]]]:
    """Per query, the top_k rows among the corpus items by vector alone and by hybrid."""
    keep = {retriever.row_of[i] for i in corpus_ids}
    others = [r for r in range(len(retriever)) if r not in keep]
    vectors = embedder.embed_texts([q.text for q in queries])
    out = {"vector": [], "hybrid": []}
    for q, v in zip(queries, vectors):
        for mode in out:
            hits = retriever.search(v, top_k, query_text=q.text, hybrid=mode == "hybrid", collapse=False,
                                    exclude_rows=others)
            out[mode].append([h.row for h in hits])
    return out


def metrics_of(rankings: list[list[int]], queries: list[EvalQuery], retriever) -> dict[str, float]:
    """nDCG@10 and R@1 (first result grade 2) of ranked rows, over the rows each query grades."""
    n = len(retriever)
    scores = np.full((len(queries), n), -np.inf)
    rel = np.zeros((len(queries), n), dtype=np.int8)
    for i, (ranked, q) in enumerate(zip(rankings, queries)):
        scores[i, ranked] = -np.arange(len(ranked), dtype=np.float64)
        for item_id, g in q.relevance.items():
            rel[i, retriever.row_of[item_id]] = g
    return {"nDCG@10": round(ndcg_at_k(scores, rel, 10), 4), "R@1": round(hit_rate_at_k(scores, rel == 2, 1), 4),
            "queries": len(queries)}


def rerank_rankings(reranker, model, queries: list[EvalQuery], candidates: list[list[int]], retriever,
                    features: ItemFeatures, facts: FactMatcher) -> list[list[int]]:
    out = []
    for q, rows in zip(queries, candidates):
        if not rows:
            out.append([])
            continue
        r = reranker.rerank(model, q.text, rows, retriever.vectors, features, facts)
        out.append([rows[j] for j in r.order])
    return out


def evaluate_queries(retriever, embedder, query_sets: dict[str, list[EvalQuery]], corpus_ids: list[str],
                     rerankers: dict, features: ItemFeatures, top_k: int) -> dict:
    """{set name: {mode: metrics}} for vector, hybrid and each reranker (reranking hybrid's top_k)."""
    facts = FactMatcher(retriever.meta)
    out = {}
    for name, queries in query_sets.items():
        if not queries:
            out[name] = {"skipped": "no queries"}
            continue
        cands = ranked_candidates(retriever, embedder, queries, corpus_ids, top_k)
        res = {mode: metrics_of(cands[mode], queries, retriever) for mode in ("vector", "hybrid")}
        for head_name, reranker in rerankers.items():
            t0 = time.perf_counter()
            ranked = rerank_rankings(reranker, embedder.model, queries, cands["hybrid"], retriever, features, facts)
            res[head_name] = {**metrics_of(ranked, queries, retriever),
                              "ms_per_query": round((time.perf_counter() - t0) * 1000 / max(len(queries), 1), 2)}
        out[name] = res
    return out


def heldout_sets(test_items: list[dict], caption_cfg) -> dict[str, list[EvalQuery]]:
    """The two evaluation sets over the held-out items: docs/evaluation.md's queries and the shopper set."""
    return {"held_out": build_queries(test_items, caption_cfg), "shopper": shopper_queries(test_items, caption_cfg)}


def training_queries(train_items: list[dict], caption_cfg) -> list[EvalQuery]:
    return build_queries(train_items, caption_cfg) + shopper_queries(train_items, caption_cfg) + caption_queries(train_items)


def run_reranker_training(cfg: MmrayConfig, head_name: str | None = None) -> dict:
    """Train one head with Ray Train against the current index (and its model); publish it; its summary."""
    import json
    import os
    import tempfile

    from mmray.dataset import load_items
    from mmray.embedder import Embedder
    from mmray.index.retriever import Retriever
    from mmray.rerank.reranker import HEAD_FILE, INFO_FILE, Reranker, reranker_kind
    from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore, new_version

    start = time.time()
    rc = cfg.rerank
    head_name = head_name or rc.head
    store = ArtifactStore.from_config(cfg.storage)
    index = store.resolve(INDEX_KIND, hint="run `python -m jobs.build_index` first")
    if not index.manifest.get("rerank_features"):
        raise ArtifactError(f"index {index.name} has no reranker item features: rebuild it with "
                            "--set rerank.index_features=true (or rerank.enabled: true)")
    retriever = Retriever.load(index, cfg.index)
    features = ItemFeatures.load(retriever.folder)
    model_version = store.resolve_ref(index.manifest["parents"]["model"])
    embedder = Embedder.from_version(model_version, cfg.index.embed_batch_size, "torch")
    dataset = store.resolve_ref(index.manifest["parents"]["dataset"])
    items = load_items(dataset)
    train_items = [it for it in items if it["split"] == "train" and it["id"] in retriever.row_of]
    test_items = [it for it in items if it["split"] == "test" and it["id"] in retriever.row_of]
    queries = training_queries(train_items, cfg.data.caption)
    lists = build_lists(retriever, embedder, train_items, queries, rc.list_size, rc.hard_negatives, cfg.index.hybrid,
                        rc.seed)
    facts = FactMatcher(retriever.meta)
    data = list_inputs(embedder.model, [q.text for q in queries], lists, retriever, facts, rc.query_tokens)
    t_data = time.time()
    log.info("reranker %s: %d training lists of %d candidates from %d training items", head_name, len(queries),
             rc.list_size, len(train_items))
    embed_dim = features.regions.shape[-1]
    result = fit_on_workers(
        train_loop_per_worker,
        {"data": data, "features": features, "head": head_name, "embed_dim": embed_dim, "hidden": rc.hidden,
         "epochs": rc.epochs, "lr": rc.lr, "weight_decay": rc.weight_decay, "batch_size": rc.batch_size, "seed": rc.seed,
         "threads": int(cfg.train.cpus_per_worker)},
        num_workers=rc.num_workers, cpus_per_worker=cfg.train.cpus_per_worker, store=store,
        run_name=f"reranker-{head_name}-{new_version()}", what="reranker")
    t_train = time.time()
    info = {"head": head_name, "embed_dim": embed_dim, "hidden": rc.hidden, "query_tokens": rc.query_tokens,
            "item_tokens": index.manifest["rerank_features"]["item_tokens"], "scalar_features": list(SCALAR_FEATURES),
            "model_version": index.manifest["model_version"], "model": index.manifest["parents"]["model"],
            "index": index.ref, "train_queries": len(queries), "list_size": rc.list_size,
            "history": result.metrics.get("history", [])}
    with result.checkpoint.as_directory() as ckpt, tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(ckpt, HEAD_FILE), "rb") as src, open(os.path.join(folder, HEAD_FILE), "wb") as dst:
            dst.write(src.read())
        with open(os.path.join(folder, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
        reranker = Reranker.from_folder(folder)
        metrics = evaluate_queries(retriever, embedder, heldout_sets(test_items, cfg.data.caption),
                                   [it["id"] for it in test_items], {head_name: reranker}, features, rc.top_k)
        info["held_out"] = metrics
        with open(os.path.join(folder, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
        with store.begin(reranker_kind(head_name), config=cfg.model_dump(mode="json"),
                         parents={"model": info["model"], "index": index.ref, "dataset": dataset.ref}) as writer:
            writer.upload_dir(folder)
            version = writer.commit(extra={"model_version": info["model_version"], "head": head_name,
                                           "held_out": metrics})
    return {"version": version.name, "head": head_name, "model_version": info["model_version"], "index": index.name,
            "train_queries": len(queries), "test_items": len(test_items), "held_out": metrics,
            "final_loss": info["history"][-1] if info["history"] else None,
            "timings_s": {"data": round(t_data - start, 1), "train": round(t_train - t_data, 1),
                          "total": round(time.time() - start, 1)}}
