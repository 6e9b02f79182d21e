"""The reranker (issue 14): tower features, the three fusion heads, explanations, training with
Ray Train, serving through SearchService (rerank on/off, the version check).

Unit tests run on synthetic tensors and the untrained tiny model; one module fixture builds a small
Luma index (tiny model, 64 px, with reranker features) and trains a head on it with Ray Train.
"""
from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
import torch
from conftest import LUMA_CATALOG, publish_model
from PIL import Image

from mmray.rerank.explain import SCALAR_FEATURES, FactMatcher, attention_grid, query_words
from mmray.rerank.heads import HEADS, build_head, listwise_loss

E, S = 16, len(SCALAR_FEATURES)


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _inputs(b: int, k: int, seed: int = 0, g: int = 9, ti: int = 5, tq: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tm = torch.ones(b, k, ti, dtype=torch.bool)
    tm[:, :, -2:] = torch.rand(b, k, 2, generator=gen) > 0.5
    qm = torch.ones(b, tq, dtype=torch.bool)
    qm[:, -1] = False
    hi = torch.ones(b, k, dtype=torch.bool)
    hi[:, 0] = False  # a text-only candidate
    return {"q_tokens": torch.randn(b, tq, E, generator=gen), "q_mask": qm,
            "q_vec": torch.nn.functional.normalize(torch.randn(b, E, generator=gen), dim=-1),
            "regions": torch.randn(b, k, g, E, generator=gen), "has_image": hi,
            "tokens": torch.randn(b, k, ti, E, generator=gen), "token_mask": tm,
            "scalars": torch.randn(b, k, S, generator=gen)}


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("name", HEADS)
def test_scores_do_not_depend_on_candidate_order(name):
    head = build_head(name, E, S, 8, seed=1).eval()
    x = _inputs(2, 7)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    shuffled = {key: (v[:, perm] if v.dim() >= 2 and key not in ("q_tokens", "q_mask", "q_vec") else v)
                for key, v in x.items()}
    with torch.no_grad():
        s, g = head(**x)
        s2, g2 = head(**shuffled)
        # one candidate alone scores the same as inside the list
        alone = {key: (v[:, 2:3] if key not in ("q_tokens", "q_mask", "q_vec") else v) for key, v in x.items()}
        s3, _ = head(**alone)
    torch.testing.assert_close(s2, s[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g2, g[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s3[:, 0], s[:, 2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_grid_is_a_distribution(name):
    head = build_head(name, E, S, 8).eval()
    with torch.no_grad():
        _, g = head(**_inputs(3, 5, seed=2))
    assert g.shape == (3, 5, 9)
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(g[:, 0], torch.full((3, 9), 1 / 9))  # no image: uniform


def test_listwise_loss_matches_hand_computed_value():
    scores = torch.tensor([[2.0, 0.0, 1.0, 5.0]])
    gains = torch.tensor([[3.0, 1.0, 0.0, 7.0]])
    valid = torch.tensor([[True, True, True, False]])  # the last one is padding
    p = np.array([0.75, 0.25, 0.0])
    logp = np.array([2.0, 0.0, 1.0]) - np.log(np.exp([2.0, 0.0, 1.0]).sum())
    assert float(listwise_loss(scores, gains, valid)) == pytest.approx(-(p * logp).sum(), rel=1e-6)
    assert float(listwise_loss(scores, torch.zeros(1, 4), valid)) == 0.0  # no gain: skipped


def _overfit_set(n_items=24, q=24, k=6, seed=0):
    """Each query is a noisy copy of its positive item (image and text); the rest of its list is random."""
    from mmray.rerank.features import ItemFeatures

    rng = np.random.default_rng(seed)
    regions = rng.normal(size=(n_items, 9, E)).astype(np.float16)
    tokens = rng.normal(size=(n_items, 5, E)).astype(np.float16)
    features = ItemFeatures(regions, tokens, np.ones((n_items, 5), bool), np.ones(n_items, bool), (3, 3))
    rows = np.zeros((q, k), np.int64)
    q_tok = np.zeros((q, 5, E), np.float32)
    for i in range(q):
        pos = i % n_items
        rows[i] = [pos] + rng.choice([r for r in range(n_items) if r != pos], k - 1, replace=False).tolist()
        rows[i] = rng.permutation(rows[i])
        q_tok[i] = tokens[pos] + regions[pos, :5] + 0.3 * rng.normal(size=(5, E))
    gains = (rows == (np.arange(q) % n_items)[:, None]).astype(np.float32)
    q_vec = q_tok.mean(1)
    q_vec /= np.linalg.norm(q_vec, axis=1, keepdims=True)
    return features, {"rows": rows, "gains": gains, "valid": np.ones((q, k), bool), "q_tokens": q_tok,
                      "q_mask": np.ones((q, 5), bool), "q_vec": q_vec.astype(np.float32),
                      "scalars": rng.normal(size=(q, k, S)).astype(np.float32)}


@pytest.mark.parametrize("name", HEADS)
def test_each_head_overfits_a_tiny_set(name):
    from mmray.rerank.train import batch_tensors, fit_head

    features, data = _overfit_set()
    head = build_head(name, E, S, 16, seed=0)
    history = fit_head(head, data, features, epochs=60, lr=3e-2, weight_decay=0.0, batch_size=8, seed=0)
    assert history[-1] < 0.5 * history[0], history[::10]
    with torch.no_grad():
        inputs, gains, _ = batch_tensors(data, np.arange(len(data["rows"])), features)
        scores, _ = head(**inputs)
    right = (scores.argmax(-1) == gains.argmax(-1)).float().mean().item()
    assert right >= 0.95, right


# --------------------------------------------------------------------------- features, explanations


def test_region_and_token_features_average_to_the_bi_encoder_embedding():
    from mmray.config import ModelConfig
    from mmray.embedder import Embedder
    from mmray.model import build_model
    from mmray.rerank.features import image_regions, item_features, text_tokens

    model = build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=E), pretrained=False)
    emb = Embedder(model)
    pixels = emb.pixels([_jpeg(0), _jpeg(1)])
    tok = model.tokenize(["blue jacket for men", "tee"])
    with torch.no_grad():
        regions, grid = image_regions(model, pixels)
        tokens, mask = text_tokens(model, tok["input_ids"], tok["attention_mask"])
        torch.testing.assert_close(torch.nn.functional.normalize(regions.mean(1), dim=-1), model.encode_image(pixels))
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), model.encode_text(**tok))
    assert regions.shape[1] == grid[0] * grid[1]
    f = item_features(emb, ["blue jacket", "a text-only item"], [_jpeg(0), b""], 8)
    assert f.regions.dtype == np.float16 and f.regions.shape == (2, grid[0] * grid[1], E)
    assert f.has_image.tolist() == [True, False] and not f.regions[1].any()
    np.testing.assert_allclose(f.regions[0], regions[0].numpy(), atol=2e-2, rtol=1e-2)


META = {"id": ["a", "b"], "title": ["Chaz Kangeroo Hoodie", "Zing Jump Rope"], "color": ["Black", None],
        "gender": ["Men", None], "category": ["Men/Tops/Hoodies & Sweatshirts", "Gear/Fitness Equipment"],
        "attributes_json": [json.dumps({"material": ["Organic Cotton"], "climate": ["Cold"]}), "{}"]}


def test_matched_facts_and_agreement_features():
    facts = FactMatcher(META)
    assert query_words("Mens black HOODIES for the gym") == ["men", "black", "hoodie", "gym"]
    feats, matched = facts.features("mens blak hodie cotton", [0, 1], np.array([0.5, 0.1]))
    assert matched[0] == [{"attribute": "gender", "value": "Men"}, {"attribute": "color", "value": "Black"},
                          {"attribute": "category", "value": "Hoodies & Sweatshirts"},
                          {"attribute": "material", "value": "Organic Cotton"}]
    assert matched[1] == []
    i = {name: j for j, name in enumerate(SCALAR_FEATURES)}
    assert feats[0, i["facts_matched"]] == 1.0 and feats[1, i["facts_matched"]] == 0.0
    assert feats[0, i["bi_encoder_cosine"]] == pytest.approx(0.5)
    assert feats[0, i["color_agrees"]] == 1 and feats[1, i["color_agrees"]] == -1
    assert feats[0, i["gender_agrees"]] == 1 and feats[1, i["gender_agrees"]] == -1
    assert feats[0, i["title_matched"]] == pytest.approx(0.25)  # "hodie" ~ "hoodie" in the title


def test_attention_grid_shape_and_normalisation():
    g = attention_grid(np.array([1.0, 3.0, 0.0, 4.0, 0, 0]), (2, 3))
    assert g == [[0.125, 0.375, 0.0], [0.5, 0.0, 0.0]]
    u = attention_grid(np.zeros(4), (2, 2))
    assert u == [[0.25, 0.25], [0.25, 0.25]]


def test_a_reranker_of_another_model_version_is_refused():
    from mmray.rerank.reranker import Reranker, RerankerMismatch

    r = Reranker(build_head("concat_mlp", E, S, 8), {"head": "concat_mlp", "model_version": "v1"}, "v9")
    r.check({"version": "vI", "model_version": "v1", "rerank_features": {"file": "x"}})
    with pytest.raises(RerankerMismatch, match="trained against model v1.*built with model v2"):
        r.check({"version": "vI", "model_version": "v2", "rerank_features": {"file": "x"}})
    with pytest.raises(RerankerMismatch, match="no reranker item features"):
        r.check({"version": "vI", "model_version": "v1"})


def test_shopper_queries_are_graded_by_rule():
    from mmray.evalset import item_facets
    from mmray.rerank.queries import INTENTS, ShopperQuery, grade, shopper_queries, typo

    assert typo("jacket", 0) != "jacket" and len(typo("jacket", 0)) in (5, 6)
    items = [{"id": "j1", "category": "Women/Tops/Jackets", "gender": "Women", "color": "Blue",
              "attributes_json": json.dumps({"activity": ["Hiking"]})},
             {"id": "j2", "category": "Women/Tops/Jackets", "gender": "Women", "color": "Red", "attributes_json": "{}"},
             {"id": "t1", "category": "Men/Tops/Tees", "gender": "Men", "color": "Blue", "attributes_json": "{}"}]
    facets = {it["id"]: item_facets(it) for it in items}
    hiking = ShopperQuery("jacket for hiking", {"noun": frozenset({"jacket"})}, {"activity": INTENTS["for hiking"][1]})
    assert [grade(hiking, facets[i]) for i in ("j1", "j2", "t1")] == [2, 1, 0]
    warm = ShopperQuery("something warm ladies", {"climate": INTENTS["something warm"][1],
                                                  "gender": frozenset({"women"})}, {})
    assert [grade(warm, facets[i]) for i in ("j1", "j2", "t1")] == [0, 0, 0]
    qs = shopper_queries(items)
    assert qs and len({q.text for q in qs}) == len(qs)
    (blue,) = [q for q in qs if "blue" in q.text and "jacket" not in q.text and q.facets.get("noun") == "jacket"]
    assert blue.relevance == {"j1": 2, "j2": 1}  # a typo'd noun; the men's blue tee is not relevant


# --------------------------------------------------------------------------- trained on an index, served


@pytest.fixture(scope="module")
def ranked_index(tmp_path_factory, ray_session):
    import yaml

    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.rerank.train import run_reranker_training
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("rerank")
    lines = LUMA_CATALOG.read_text().splitlines()
    rows = [json.loads(line) for line in lines[::8][:50]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    catalog = tmp / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"data": {"catalog": str(catalog), "name": "luma", "image_size": 64, "holdout_fraction": 0.3,
                    "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_batch_size": 16, "embed_concurrency": 1, "query_runtime": "torch"},
           "rerank": {"enabled": True, "epochs": 3, "list_size": 8, "item_tokens": 12, "hidden": 16, "top_k": 20},
           "train": {"cpus_per_worker": 1},
           "storage": {"root": str(tmp / "artifacts")}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp / "c.yaml")
    run_preprocess(cfg)
    store = ArtifactStore.from_config(cfg.storage)
    publish_model(store, build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    manifest = build_index(cfg)
    summary = run_reranker_training(cfg, "cross_attention")
    return cfg, store, manifest, summary


def test_index_stores_features_and_training_publishes_a_checked_head(ranked_index):
    from mmray.rerank.features import ItemFeatures
    from mmray.rerank.reranker import Reranker
    from mmray.storage import INDEX_KIND

    cfg, store, manifest, summary = ranked_index
    feats = manifest["rerank_features"]
    assert feats["item_tokens"] == 12 and feats["dtype"] == "float16"
    f = ItemFeatures.load(store.resolve(INDEX_KIND).local_dir())
    assert len(f) == manifest["count"] and f.tokens.shape[1] == 12 and f.regions.dtype == np.float16
    assert summary["model_version"] == manifest["model_version"] and summary["train_queries"] > 0
    r = Reranker.load_current(store, "cross_attention")
    assert r.model_version == manifest["model_version"] and r.version == summary["version"]
    r.check(manifest)
    assert set(summary["held_out"]["held_out"]) >= {"vector", "hybrid", "cross_attention"}


def test_search_reranks_explains_and_rerank_false_keeps_the_bi_encoder_order(ranked_index):
    from mmray.search import SearchService

    cfg, store, _, _ = ranked_index
    service = SearchService.local(store, cfg.index, cfg.rerank)
    plain = SearchService.local(store, cfg.index)  # no reranker at all

    async def go():
        on = await service.search_text(query="black hoodie for men", k=5)
        off = await service.search_text(query="black hoodie for men", k=5, rerank=False)
        base = await plain.search_text(query="black hoodie for men", k=5)
        items = await service.search_text(query="black hoodie for men", k=30, collapse=False)
        return on, off, base, items
    on, off, base, items = asyncio.run(go())
    assert on.reranked and not off.reranked and not base.reranked
    assert [(h.id, h.score) for h in off.hits] == [(h.id, h.score) for h in base.hits]
    assert off.explanations is None
    assert len(on.hits) == 5 and len({h.product_id for h in on.hits}) == 5
    for ex in on.explanations:
        h, w = ex["grid"]
        assert len(ex["attention"]) == h and all(len(row) == w for row in ex["attention"])
        assert sum(map(sum, ex["attention"])) == pytest.approx(1.0, abs=1e-3)
        assert all(set(m) == {"attribute", "value"} for m in ex["matched"])
    # uncollapsed: the top rerank.top_k items in the head's order (scores descending), then the retriever's
    top = cfg.rerank.top_k
    assert len(items.hits) == 30
    scores = [h.score for h in items.hits[:top]]
    assert scores == sorted(scores, reverse=True)
    assert all(e is None for e in items.explanations[top:]) and all(e for e in items.explanations[:top])
    same_pool = asyncio.run(plain.search_text(query="black hoodie for men", k=30, collapse=False))
    assert {h.id for h in items.hits[:top]} == {h.id for h in same_pool.hits[:top]}
    assert [h.id for h in items.hits[top:]] == [h.id for h in same_pool.hits[top:]]


def test_reranker_for_another_model_is_refused_and_search_serves_unreranked(ranked_index, tmp_path):
    import shutil

    from mmray.rerank.reranker import INFO_FILE, reranker_kind
    from mmray.search import RerankUnavailable, SearchService

    cfg, store, _, _ = ranked_index
    current = store.resolve(reranker_kind("cross_attention"))
    folder = tmp_path / "other"
    shutil.copytree(current.local_dir(), folder, ignore=shutil.ignore_patterns(".mmray-verified", "manifest.json"))
    info = json.loads((folder / INFO_FILE).read_text())
    info["model_version"] = "v20000101-000000-000-000000"
    (folder / INFO_FILE).write_text(json.dumps(info))
    with store.begin(reranker_kind("cross_attention"), config={}) as writer:
        writer.upload_dir(str(folder))
        writer.commit()
    try:
        service = SearchService.local(store, cfg.index, cfg.rerank)
        res = asyncio.run(service.search_text(query="black hoodie", k=5))
        assert not res.reranked and res.explanations is None
        with pytest.raises(RerankUnavailable, match="trained against model v20000101-000000-000-000000"):
            asyncio.run(service.search_text(query="black hoodie", k=5, rerank=True))
    finally:
        store.set_current(reranker_kind("cross_attention"), current.name)


def test_evaluation_reports_the_reranked_mode_beside_hybrid(ranked_index):
    """jobs.evaluate ranks the held-out queries as the app does with the reranker on; with it off it says why."""
    from jobs.evaluate import evaluate_index, format_evaluation

    cfg, _, _, _ = ranked_index
    on = evaluate_index(cfg)
    assert on["reranker"] == "cross_attention" and "rerank_skipped" not in on
    assert set(on["reranked"]) == set(on["hybrid"])
    assert all(0.0 <= on["reranked"][key] <= 1.0 for key in ("query_R@10", "query_nDCG@10", "query_MRR"))
    assert "reranked search" in format_evaluation(on)
    off = evaluate_index(cfg.model_copy(update={"rerank": cfg.rerank.model_copy(update={"enabled": False})}))
    assert "reranked" not in off and off["rerank_skipped"] == "rerank.enabled is false"
    assert off["hybrid"] == on["hybrid"]


# --------------------------------------------------------------------------- /similar, image search, split topology


def _check_explanations(explanations):
    for ex in explanations:
        h, w = ex["grid"]
        assert len(ex["attention"]) == h and all(len(row) == w for row in ex["attention"])
        assert all(v >= 0 for row in ex["attention"] for v in row)
        assert sum(map(sum, ex["attention"])) == pytest.approx(1.0, abs=1e-3)
        assert all(set(m) == {"attribute", "value"} for m in ex["matched"])


def test_similar_query_is_the_seed_products_own_text_tokens(ranked_index):
    """/similar's stand-in query: the stored item tokens of the seed, which are the text tower's
    projected token states of the seed's product text (recomputed here from the dataset's text)."""
    from mmray.dataset import load_items
    from mmray.embedder import Embedder
    from mmray.index.retriever import Retriever
    from mmray.rerank.features import ItemFeatures, query_tokens
    from mmray.rerank.search import similar_query
    from mmray.storage import INDEX_KIND

    cfg, store, manifest, _ = ranked_index
    index = store.resolve(INDEX_KIND)
    retriever = Retriever.load(index, cfg.index)
    features = ItemFeatures.load(retriever.folder)
    model = Embedder.from_version(store.resolve_ref(manifest["parents"]["model"]), 16, "torch").model
    text_of = {it["id"]: it["text"] for it in load_items(store.resolve_ref(manifest["parents"]["dataset"]))}
    pid = retriever.meta["product_id"][0]
    seed = retriever.rows_for(pid)[0]
    text, (tokens, mask) = similar_query(retriever, features, pid, 16)
    ref, ref_mask = query_tokens(model, [text_of[retriever.meta["id"][seed]]], 12)  # item_tokens = 12 < 16
    n = int(ref_mask.sum())
    assert tokens.shape[1] == n and mask.all()
    torch.testing.assert_close(tokens, ref[:, :n], atol=2e-2, rtol=1e-2)  # stored as fp16
    assert retriever.meta["title"][seed] in text
    assert similar_query(retriever, features, "no-such-product", 16) is None


def test_similar_reranks_explains_and_rerank_false_keeps_the_bi_encoder_order(ranked_index):
    from mmray.index.retriever import Retriever
    from mmray.rerank.reranker import Reranker
    from mmray.rerank.search import similar_query
    from mmray.search import SearchService
    from mmray.storage import INDEX_KIND

    cfg, store, _, _ = ranked_index
    service = SearchService.local(store, cfg.index, cfg.rerank.model_copy(update={"routes": ["search"]}))
    both = SearchService.local(store, cfg.index, cfg.rerank)  # rerank.routes: search and similar (the default)
    assert cfg.rerank.routes == ["search", "similar"]
    plain = SearchService.local(store, cfg.index)
    retriever = Retriever.load(store.resolve(INDEX_KIND), cfg.index)
    pid = retriever.meta["product_id"][3]

    async def go():
        return (await service.similar(product_id=pid, k=6), await service.similar(product_id=pid, k=6, rerank=False),
                await service.similar(product_id=pid, k=6, rerank=True), await both.similar(product_id=pid, k=6),
                await plain.similar(product_id=pid, k=6), await service.similar(product_id="nope", k=6, rerank=True))
    default, off, on, on_by_route, base, unknown = asyncio.run(go())
    assert unknown is None
    assert not default.reranked and not off.reranked and off.explanations is None
    for res in (default, off):
        assert [(h.id, h.score) for h in res.hits] == [(h.id, h.score) for h in base.hits]
    assert on.reranked and on_by_route.reranked
    assert [h.id for h in on.hits] == [h.id for h in on_by_route.hits]
    assert len(on.hits) == 6 and len({h.product_id for h in on.hits}) == 6 and pid not in {h.product_id for h in on.hits}
    _check_explanations(on.explanations)
    # reference: the head's scores of /similar's top_k items; each product's best variant, best first
    reranker = Reranker.load_current(store, "cross_attention")
    pooled = service.backend.rerankers.get(service.backend.indexes.newest)
    cands = retriever.similar(pid, cfg.rerank.top_k, collapse=False)
    text, tokens = similar_query(retriever, pooled[1], pid, reranker.info["query_tokens"])
    scored = reranker.rerank(None, text, [h.row for h in cands], retriever.vectors, pooled[1], pooled[2], tokens)
    best: dict[str, tuple[float, str]] = {}
    for h, s in zip(cands, scored.scores):
        if h.product_id not in best or s > best[h.product_id][0]:
            best[h.product_id] = (float(s), h.id)
    want = sorted(best.values(), key=lambda t: -t[0])[:6]
    assert [h.id for h in on.hits] == [i for _, i in want]
    assert [h.score for h in on.hits] == pytest.approx([s for s, _ in want], abs=1e-5)


def test_image_search_is_never_reranked(ranked_index):
    from mmray.index.retriever import Retriever
    from mmray.search import RerankUnavailable, SearchService
    from mmray.storage import INDEX_KIND

    cfg, store, _, _ = ranked_index
    service = SearchService.local(store, cfg.index, cfg.rerank)
    plain = SearchService.local(store, cfg.index)
    retriever = Retriever.load(store.resolve(INDEX_KIND), cfg.index)
    photo = retriever.image_bytes(next(r for r in range(len(retriever)) if retriever.meta["image"][r]))

    async def go():
        return (await service.search_image(image=photo, k=5), await service.search_image(image=photo, k=5, rerank=False),
                await plain.search_image(image=photo, k=5))
    default, off, base = asyncio.run(go())
    for res in (default, off):
        assert not res.reranked and res.explanations is None
        assert [(h.id, h.score) for h in res.hits] == [(h.id, h.score) for h in base.hits]
    with pytest.raises(RerankUnavailable, match="image search is not reranked"):
        asyncio.run(service.search_image(image=photo, k=5, rerank=True))


def test_reranker_deployment_batch_answers_each_request_as_alone(ranked_index):
    """The Reranker deployment's batch body (what @serve.batch calls): text searches of different lengths
    (one text-tower run for all of them), a /similar and a version it does not hold, mixed in one batch,
    each answered as the in-process service answers it alone."""
    from deployments.replicas import RerankerDeployment
    from mmray.search import SearchService

    cfg, store, _, _ = ranked_index
    local = SearchService.local(store, cfg.index, cfg.rerank)
    replica = object.__new__(RerankerDeployment.func_or_class)  # its state, without a Serve replica around it
    replica.indexes, replica.models, replica.rerankers = local.backend.indexes, local.backend.models, local.backend.rerankers
    info = asyncio.run(local.info())
    pid = local.backend.indexes.newest.meta["product_id"][5]
    queries = ["tee", "black hoodie for men with a zip for the gym"]
    search = {"route": "search", "version": info["version"], "model": info["model"], "k": 6, "filters": None,
              "hybrid": cfg.index.hybrid, "collapse": True, "top_k": cfg.rerank.top_k}
    out = replica._batch([search | {"query": queries[0]},
                          {"route": "similar", "version": info["version"], "product_id": pid, "k": 6, "filters": None,
                           "top_k": cfg.rerank.top_k},
                          {"route": "search", "version": "v20991231-000000-000-abcdef", "model": info["model"],
                           "query": "tee", "k": 6, "filters": None, "hybrid": False, "collapse": True, "top_k": 20},
                          search | {"query": queries[1]}])
    assert "not_loaded" in out[2]
    for got, q in ((out[0], queries[0]), (out[3], queries[1])):
        want = asyncio.run(local.search_text(query=q, k=6))
        assert [h.id for h in got[0]] == [h.id for h in want.hits], q
        assert [h.score for h in got[0]] == pytest.approx([h.score for h in want.hits], abs=1e-5)
        assert got[1] == want.explanations
    want = asyncio.run(local.similar(product_id=pid, k=6, rerank=True))
    assert [h.id for h in out[1][0]] == [h.id for h in want.hits] and out[1][1] == want.explanations


def test_split_topology_reranks_like_the_local_service(ranked_index, tmp_path):
    """The Serve app with `serve.topology: split` (Ingress -> Embedder, Retriever, Reranker handles): text
    search and /similar reranked in the same order, with the same scores, as the in-process service;
    concurrent queries of different lengths (batched together by the Reranker's @serve.batch) too."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import yaml
    from conftest import _free_port
    from ray import serve

    from deployments.app import build_app
    from mmray.search import SearchService

    cfg, store, _, _ = ranked_index
    raw = cfg.model_dump(mode="json")
    port = _free_port()
    raw["serve"] |= {"topology": "split", "host": "127.0.0.1", "port": port, "direct_ingress": False,
                     "request_timeout_s": 60, "rerank_batch_wait_s": 0.05, "ingress": {"num_cpus": 0.25},
                     "embedder": {"num_cpus": 0.25}, "retriever": {"num_cpus": 0.25}, "reranker": {"num_cpus": 0.25}}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(raw))
    local = SearchService.local(store, cfg.index, cfg.rerank)
    queries = ["black hoodie for men", "tee", "blue jacket for women for hiking", "yoga pant"]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"config": str(path)}), name="rerank-split", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.time() + 120
            while time.time() < deadline and client.get("/readyz").status_code != 200:
                time.sleep(0.5)
            assert client.get("/readyz").status_code == 200

            def remote(q):
                r = client.post("/v1/search", json={"query": q, "k": 5})
                assert r.status_code == 200, r.text
                return r.json()
            for q, body in zip(queries, ThreadPoolExecutor(4).map(remote, queries)):
                want = asyncio.run(local.search_text(query=q, k=5))
                assert body["reranked"] and want.reranked
                assert [r["id"] for r in body["results"]] == [h.id for h in want.hits], q
                assert [r["score"] for r in body["results"]] == pytest.approx([h.score for h in want.hits], abs=1e-4)
                assert [r["explanation"]["matched"] for r in body["results"]] == [e["matched"] for e in want.explanations]
                _check_explanations([r["explanation"] for r in body["results"]])
            off = client.post("/v1/search", json={"query": queries[0], "k": 5, "rerank": False}).json()
            want_off = asyncio.run(local.search_text(query=queries[0], k=5, rerank=False))
            assert not off["reranked"] and [r["id"] for r in off["results"]] == [h.id for h in want_off.hits]
            pid = local.backend.indexes.newest.meta["product_id"][3]
            sim = client.get(f"/v1/products/{pid}/similar", params={"k": 5, "rerank": "true"}).json()
            want_sim = asyncio.run(local.similar(product_id=pid, k=5, rerank=True))
            assert sim["reranked"] and [r["id"] for r in sim["results"]] == [h.id for h in want_sim.hits]
            _check_explanations([r["explanation"] for r in sim["results"]])
            default_sim = client.get(f"/v1/products/{pid}/similar", params={"k": 5}).json()
            assert default_sim["reranked"]  # rerank.routes has similar by default
            assert [r["id"] for r in default_sim["results"]] == [r["id"] for r in sim["results"]]
            off_sim = client.get(f"/v1/products/{pid}/similar", params={"k": 5, "rerank": "false"}).json()
            want_off_sim = asyncio.run(local.similar(product_id=pid, k=5, rerank=False))
            assert not off_sim["reranked"] and [r["id"] for r in off_sim["results"]] == [h.id for h in want_off_sim.hits]
            img = client.post("/v1/search/image", files={"image": ("p.jpg", _jpeg(3), "image/jpeg")},
                              data={"k": "3", "rerank": "true"})
            assert img.status_code == 409 and img.json()["error"]["code"] == "rerank_unavailable", img.text
    finally:
        serve.shutdown()
