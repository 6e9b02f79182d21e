"""The vector index: FAISS recall against brute force, sharding, save/load, factory strings; index
versions (the current pointer, corrupt or half-written versions refused); and one
end-to-end build of a small slice of the shipped catalog with a tiny (untrained) model."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LUMA_CATALOG, ROOT, publish_model

from mmray.config import IndexConfig
from mmray.index.ann import auto_factory, build_ann, exact_search, load_ann, recall_at_k, resolve_nprobe, save_ann, set_search_effort
from mmray.index.filters import SearchFilters
from mmray.index.lexical import LexicalIndex
from mmray.index.retriever import IndexLoadError, Retriever
from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore, file_sha256


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- FAISS against brute force


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin while they wait: on 2 shared cores one thread is several times faster."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def clustered():
    """20k unit vectors (64-d) from a mixture of 200 gaussians, and 200 held-out queries from it."""
    rng = np.random.default_rng(0)
    n, nq, dim, k = 20_000, 200, 64, 200
    centres = unit(rng.standard_normal((k, dim)))
    labels = rng.integers(0, k, n + nq)
    x = unit(centres[labels] + 0.6 * rng.standard_normal((n + nq, dim)) / np.sqrt(dim))
    return x[:n], x[n:]


def test_flat_is_exact(clustered):
    x, q = clustered
    index = build_ann(x, "Flat")
    scores, ids = index.search(q, 10)
    exact_scores, exact_ids = exact_search(x, q, 10)
    assert np.array_equal(ids, exact_ids)
    assert np.allclose(scores, exact_scores, atol=1e-5)
    assert np.allclose(exact_scores[:, 0], np.max(q @ x.T, axis=1), atol=1e-6)  # the reference is right
    assert recall_at_k(index, x, q, 10) == 1.0


# "IVF256,PQ16,RFlat" spends ~45 s (2 cores) in PQ polysemous training, which search never uses;
# `np` turns that off and builds the same kind of index (IVF-PQ, re-ranked on the full vectors).
@pytest.mark.parametrize("factory", ["HNSW32", "IVF256,Flat", "IVF256,PQ16np,RFlat", "IVF256,PQ16,Refine(SQ8)"])
def test_ann_recall_at_10(clustered, factory):
    x, q = clustered
    index = build_ann(x, factory, train_sample=10_000, nprobe=32, ef_search=128)
    assert index.ntotal == len(x)
    recall = recall_at_k(index, x, q, 10)
    assert recall >= 0.95, f"{factory}: recall@10 {recall:.3f}"
    if "PQ16np" in factory:  # the same index as the literal "IVF256,PQ16,RFlat", less the unused training
        literal = faiss.index_factory(64, "IVF256,PQ16,RFlat", faiss.METRIC_INNER_PRODUCT)
        assert type(literal) is type(index) and isinstance(index, faiss.IndexRefineFlat)
        assert faiss.downcast_index(faiss.extract_index_ivf(index)).pq.M == 16
    if factory.startswith("IVF"):
        ivf = faiss.extract_index_ivf(index)
        assert ivf.nlist == 256 and ivf.nprobe == 32
        set_search_effort(index, nprobe=1)  # the knob is wired: one list probed loses neighbours
        assert recall_at_k(index, x, q, 10) < recall
    else:
        assert faiss.downcast_index(index).hnsw.efSearch == 128


def test_sharded_flat_equals_unsharded(clustered):
    x, q = clustered
    one, three = build_ann(x, "Flat"), build_ann(x, "Flat", num_shards=3)
    assert isinstance(three, faiss.IndexShards) and three.count() == 3 and three.ntotal == len(x)
    assert [three.at(i).ntotal for i in range(3)] == [6666, 6667, 6667]
    s1, i1 = one.search(q, 10)
    s3, i3 = three.search(q, 10)
    assert np.array_equal(i1, i3)  # ids are global row numbers, not per-shard ones
    assert np.allclose(s1, s3, atol=1e-6)


@pytest.mark.parametrize("factory,shards", [("Flat", 3), ("IVF16,Flat", 3), ("HNSW32", 2), ("HNSW32", 1)])
def test_save_load_round_trip(tmp_path, clustered, factory, shards):
    x, q = clustered
    x = x[:4000]
    index = build_ann(x, factory, num_shards=shards)
    names = save_ann(index, str(tmp_path))
    assert names == [f"shard_{i:03d}.faiss" for i in range(shards)]
    assert sorted(os.listdir(tmp_path)) == names
    loaded = load_ann([str(tmp_path / n) for n in names])
    assert isinstance(loaded, faiss.IndexShards) == (shards > 1)
    assert loaded.ntotal == len(x)
    s0, i0 = index.search(q, 10)
    s1, i1 = loaded.search(q, 10)
    assert np.array_equal(i0, i1) and np.allclose(s0, s1, atol=1e-6)
    if factory.startswith("IVF"):  # search effort is restored on load, per shard
        assert all(faiss.extract_index_ivf(loaded.at(i)).nprobe == 8 for i in range(shards))  # `auto` on flat lists


def test_nprobe_auto_is_8_on_flat_lists_32_on_codes_and_a_number_wins():
    import faiss

    x = np.random.default_rng(0).standard_normal((4_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat, pq = build_ann(x, "IVF32,Flat", nprobe="auto"), build_ann(x, "IVF32,PQ8,Refine(SQ8)", nprobe="auto")
    assert faiss.extract_index_ivf(flat).nprobe == 8 and faiss.extract_index_ivf(pq).nprobe == 32
    assert resolve_nprobe(flat, 5) == 5 and resolve_nprobe(faiss.IndexFlatIP(32), "auto") == 32
    shards = build_ann(x, "IVF16,Flat", num_shards=2, nprobe="auto")
    assert [faiss.extract_index_ivf(shards.at(i)).nprobe for i in range(2)] == [8, 8]
    set_search_effort(shards, nprobe=3)
    assert [faiss.extract_index_ivf(shards.at(i)).nprobe for i in range(2)] == [3, 3]
    assert IndexConfig().nprobe == "auto" and IndexConfig(nprobe=4).nprobe == 4
    for bad in (0, "fast"):
        with pytest.raises(ValueError):
            IndexConfig(nprobe=bad)


def test_auto_factory_choices():
    assert auto_factory(1_000, 64) == "Flat"
    assert auto_factory(50_000, 256) == "Flat"
    assert auto_factory(50_001, 256) == "IVF512,Flat"  # 4 * sqrt(n) lists, rounded down to a power of 2
    assert auto_factory(200_000, 256) == "IVF1024,Flat"
    assert auto_factory(2_000_000, 256) == "IVF4096,Flat"
    assert auto_factory(2_000_001, 256) == "IVF4096,PQ32,Refine(SQ8)"
    assert auto_factory(100_000_000, 512) == "IVF32768,PQ64,Refine(SQ8)"
    assert auto_factory(3_000_000, 64) == "IVF4096,PQ8,Refine(SQ8)"
    for n in (1_000, 100_000, 3_000_000, 100_000_000):
        for dim in (32, 36, 100, 256, 384, 512, 768):
            spec = auto_factory(n, dim)
            faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)  # every choice is buildable
            if ",PQ" in spec:
                m = int(spec.split(",")[1].removeprefix("PQ"))
                assert dim % m == 0 and m >= min(8, dim // 8)
    small = build_ann(unit(np.random.default_rng(0).standard_normal((500, 16))), "auto")
    assert isinstance(faiss.downcast_index(small), faiss.IndexFlat)


@pytest.mark.parametrize("factory", ["NotAnIndex", "Flat,Flat", "", "IVF64,PQ7", "PQ16x99"])
@pytest.mark.parametrize("shards", [1, 3])
def test_invalid_factory_string_is_a_value_error(factory, shards):
    x = unit(np.random.default_rng(0).standard_normal((300, 32)))
    with pytest.raises(ValueError) as info:
        build_ann(x, factory, num_shards=shards)
    message = str(info.value)
    assert message.startswith(f"invalid FAISS factory string {factory!r}: ") and "\n" not in message


def test_untrainable_factory_is_a_value_error():
    x = unit(np.random.default_rng(0).standard_normal((1000, 32)))
    with pytest.raises(ValueError, match=r"'IVF4096,Flat' cannot be trained on 1000 vectors: .*4096") as info:
        build_ann(x, "IVF4096,Flat")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- index versions


def write_index(store: ArtifactStore, n: int = 120, dim: int = 16, seed: int = 0, num_shards: int = 2,
                commit: bool = True):
    """Write an index version the way build_index does (files, then the manifest, through the
    artifact layer; the pointer is left alone). With `commit=False` stop before the manifest and
    return the half-written writer."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, dim)))
    writer = store.begin(INDEX_KIND)
    folder = writer.path()
    shards = save_ann(build_ann(vectors, "Flat", num_shards), folder)
    np.save(os.path.join(folder, "vectors.npy"), vectors)
    meta = {"id": [f"s{seed}-{i}" for i in range(n)], "product_id": [f"p{seed}-{i // 2}" for i in range(n)],
            "title": [f"item {i} of version {seed}" for i in range(n)],
            "category": ["Women/Tops/Jackets" if i % 2 else "Men/Bottoms" for i in range(n)],
            "gender": ["Women" if i % 2 else "Men" for i in range(n)], "color": ["Blue"] * n,
            "price": [float(10 + i) for i in range(n)], "available": [True] * n,
            "image": [f"images/{i}.jpg" for i in range(n)]}
    pq.write_table(pa.table(meta), os.path.join(folder, "metadata.parquet"))
    LexicalIndex.build(meta["title"]).save(os.path.join(folder, "lexical"))
    if not commit:
        return writer
    return writer.commit(extra={"count": n, "dim": dim, "shards": shards, "num_shards": len(shards)},
                         make_current=False)


def load(store: ArtifactStore, version: str | None = None) -> Retriever:
    return Retriever.load(store.resolve(INDEX_KIND, version))


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def test_a_written_index_loads_and_searches(store):
    v = write_index(store)
    r = load(store, v.name)
    assert r.version == v.name and len(r) == 120 and isinstance(r.ann, faiss.IndexShards)
    hits = r.search(r.vectors[7], k=3, collapse=False)
    assert hits[0].row == 7 and hits[0].id == "s0-7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.row for h in r.search(r.vectors[7], k=3, filters=SearchFilters(gender="men"), collapse=False)
            if h.row % 2] == []


def test_version_swap_keeps_the_old_index_until_the_new_one_is_complete(store):
    with pytest.raises(IndexLoadError, match="nothing has been published"):
        Retriever.load_current(store)
    v1 = write_index(store, seed=1)
    store.set_current(INDEX_KIND, v1.name)
    old = Retriever.load_current(store)
    assert old.version == v1.name and old.item(0)["id"] == "s1-0"

    # v2 is being written: every file but the manifest
    half = write_index(store, seed=2, commit=False)
    assert store.current(INDEX_KIND) == v1.name and store.versions(INDEX_KIND) == [v1.name]
    assert Retriever.load_current(store).version == v1.name
    with pytest.raises(ArtifactError, match="not a complete version"):
        load(store, half.name)  # a half-written version is refused even if asked for directly

    # v2 completes: manifest last; the pointer still names v1 until it moves
    v2 = half.commit(extra={"shards": ["shard_000.faiss", "shard_001.faiss"]}, make_current=False)
    assert Retriever.load_current(store).version == v1.name
    store.set_current(INDEX_KIND, v2.name)
    new = Retriever.load_current(store)
    assert new.version == v2.name and new.item(0)["id"] == "s2-0"
    assert sorted(os.listdir(store.path(INDEX_KIND))) == sorted(["current.json", v1.name, v2.name])  # no temp pointer

    # the retriever loaded before the swap keeps serving its own version
    assert old.search(old.vectors[3], k=1, collapse=False)[0].id == "s1-3"
    assert new.search(new.vectors[3], k=1, collapse=False)[0].id == "s2-3"


def _flip_byte(path, offset=None):
    data = bytearray(open(path, "rb").read())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _manifest(folder) -> dict:
    return json.load(open(os.path.join(folder, "manifest.json")))


def _save_manifest(folder, doc) -> None:
    json.dump(doc, open(os.path.join(folder, "manifest.json"), "w"))


def _rewrite_manifest(folder, **changes):
    """A manifest that matches the damaged files (what a buggy writer would leave)."""
    doc = _manifest(folder) | changes
    for rel in doc["files"]:
        path = os.path.join(folder, rel)
        doc["files"][rel] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    _save_manifest(folder, doc)


def _edit(folder, fn):
    doc = _manifest(folder)
    fn(doc)
    _save_manifest(folder, doc)


CORRUPTIONS = {
    "missing manifest": (lambda d: os.remove(os.path.join(d, "manifest.json")),
                         re.escape("is not a complete version: no manifest.json")),
    "manifest is not JSON": (lambda d: open(os.path.join(d, "manifest.json"), "w").write('{"version": "v1", "fi'),
                             "has an unreadable manifest"),
    "manifest is empty": (lambda d: open(os.path.join(d, "manifest.json"), "w").close(), "has an unreadable manifest"),
    "manifest without files": (lambda d: _edit(d, lambda m: m.pop("files")), "has an unreadable manifest"),
    "manifest without version": (lambda d: _edit(d, lambda m: m.pop("version")),
                                 "has an unreadable manifest: KeyError: 'version'"),
    "manifest is a list": (lambda d: json.dump([1, 2], open(os.path.join(d, "manifest.json"), "w")),
                           "has an unreadable manifest"),
    "manifest with a flipped byte": (lambda d: _flip_byte(os.path.join(d, "manifest.json"), 2),
                                     "has an unreadable manifest"),
    "manifest entry without sizes": (lambda d: _edit(d, lambda m: m["files"].update({"vectors.npy": {}})),
                                     "has an unreadable manifest"),
    "truncated shard": (lambda d: os.truncate(os.path.join(d, "shard_001.faiss"),
                                              os.path.getsize(os.path.join(d, "shard_001.faiss")) // 2),
                        r"shard_001.faiss has \d+ bytes, its manifest says \d+"),
    "flipped byte in a shard": (lambda d: _flip_byte(os.path.join(d, "shard_000.faiss")),
                                r"shard_000.faiss does not match its SHA-256"),
    "flipped byte in vectors": (lambda d: _flip_byte(os.path.join(d, "vectors.npy")),
                                r"vectors.npy does not match its SHA-256"),
    "missing metadata": (lambda d: os.remove(os.path.join(d, "metadata.parquet")), "is missing metadata.parquet"),
    "missing shard": (lambda d: os.remove(os.path.join(d, "shard_001.faiss")), "is missing shard_001.faiss"),
    "missing lexical file": (lambda d: os.remove(os.path.join(d, "lexical", sorted(os.listdir(
        os.path.join(d, "lexical")))[0])), "is missing lexical/"),
    "missing folder": (lambda d: shutil.rmtree(d), "is not a complete version"),
    # consistent with its manifest, but not what the manifest's writer meant
    "shard that is not a FAISS file": (lambda d: (open(os.path.join(d, "shard_000.faiss"), "wb").write(b"x" * 99),
                                                  _rewrite_manifest(d)),
                                       "cannot be loaded: RuntimeError"),
    "manifest listing no shards": (lambda d: _rewrite_manifest(d, shards=[]), "cannot be loaded"),
    "fewer vectors than rows": (lambda d: (np.save(os.path.join(d, "vectors.npy"),
                                                   np.load(os.path.join(d, "vectors.npy"))[:100]),
                                           _rewrite_manifest(d)),
                                "is inconsistent: 120 vectors in FAISS, 100 stored, 120 metadata rows"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_or_half_written_index_is_refused(store, case):
    v = write_index(store)
    assert load(store, v.name).version == v.name  # fine before the damage
    damage, message = CORRUPTIONS[case]
    damage(store.path(INDEX_KIND, v.name))
    with pytest.raises(ArtifactError, match=message) as info:
        load(store, v.name)
    assert v.name in str(info.value)


def test_checksums_can_be_skipped_but_sizes_cannot(store):
    v = write_index(store)
    folder = store.path(INDEX_KIND, v.name)
    _flip_byte(os.path.join(folder, "vectors.npy"))
    assert store.resolve(INDEX_KIND, v.name, verify=False).name == v.name
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.resolve(INDEX_KIND, v.name)
    os.truncate(os.path.join(folder, "vectors.npy"), 10)
    with pytest.raises(ArtifactError, match="vectors.npy has 10 bytes"):
        store.resolve(INDEX_KIND, v.name, verify=False)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    """60 Luma rows preprocessed at 64 px, a tiny untrained model published as the current model,
    and one index built from them."""
    from mmray.config import load_config
    from mmray.config.model import ModelConfig
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("index_e2e")
    rows = [json.loads(line) for line in LUMA_CATALOG.read_text().splitlines()[:60]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    (root / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = root / "artifacts"
    cfg = load_config(None, [f"data.catalog={root / 'catalog.jsonl'}", f"storage.root={storage}",
                             f"data.image_root={LUMA_CATALOG.parent}",
                             "data.image_size=64", "index.embed_batch_size=32", "index.embed_concurrency=1"])
    run_preprocess(cfg)
    store = ArtifactStore.from_config(cfg.storage)
    model_version = publish_model(store, build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32)))
    manifest = build_index(cfg)
    return {"cfg": cfg, "rows": rows, "storage": storage, "store": store, "manifest": manifest,
            "model_version": model_version}


@pytest.mark.slow
def test_build_index_publishes_a_complete_version(built):
    m, rows, storage = built["manifest"], built["rows"], built["storage"]
    indexes = storage / "indexes"
    assert m["path"] == str(indexes / m["version"]) and os.path.isdir(m["path"])
    assert m["format"] == 2 and m["kind"] == "indexes" and m["count"] == 60 and m["dim"] == 32
    assert m["products"] == len({r["product_id"] for r in rows})
    assert m["factory"] == "Flat" and m["num_shards"] == 1 and m["shards"] == ["shard_000.faiss"]
    dataset = built["store"].current("datasets/luma")
    assert m["model_version"] == built["model_version"]
    assert m["parents"] == {"model": f"models/dual_encoder/{built['model_version']}", "dataset": f"datasets/luma/{dataset}"}
    assert m["config"]["data"]["image_size"] == 64  # the config that built it travels with it
    assert m["image_weight"] == 0.5 and m["recall_at_10_self_check"] == 1.0
    assert set(m["timings_s"]) == {"embed", "build"}
    files = set(m["files"])
    assert {"shard_000.faiss", "vectors.npy", "metadata.parquet"} <= files
    assert {f"images/{i}.jpg" for i in range(60)} <= files and any(f.startswith("lexical/") for f in files)
    on_disk = json.load(open(os.path.join(m["path"], "manifest.json")))
    assert on_disk["version"] == m["version"] and "path" not in on_disk
    assert json.load(open(indexes / "current.json"))["version"] == m["version"]
    assert sorted(os.listdir(indexes)) == ["current.json", m["version"]]  # nothing else left behind

    r = Retriever.load_current(built["store"])
    assert r.version == m["version"] and len(r) == 60
    assert [r.item(i)["id"] for i in range(60)] == [row["id"] for row in rows]  # rows keep catalog order
    assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    with open(os.path.join(m["path"], "images", "0.jpg"), "rb") as f:
        assert f.read(2) == b"\xff\xd8"


@pytest.mark.slow
def test_search_service_on_the_built_index(built):
    import asyncio

    from mmray.search import SearchService

    m, rows = built["manifest"], built["rows"]
    svc = SearchService.local(built["store"], built["cfg"].index)
    run = asyncio.run
    res = run(svc.search_text(query="hoodie", k=5))
    hits = res.hits
    assert res.index_version == m["version"] and len(hits) == 5 and len({h.product_id for h in hits}) == 5
    assert any("lexical" in h.retrievers for h in hits)  # hybrid by default: BM25 finds the hoodies
    hits = run(svc.search_text(query="jacket", k=5, filters=SearchFilters(category="Men"), hybrid=False,
                               collapse=False)).hits
    assert len(hits) == 5 and all(rows[h.row]["category"].startswith("Men/") for h in hits)

    # An image query: the results are the exact nearest items to the image's embedding. (The tiny
    # model is untrained, so whether an item's own photo ranks it first is left untested.)
    item = next(i for i, r in enumerate(rows) if len(r["images"]) == 1)
    with open(rows[item]["images"][0], "rb") as f:
        image = f.read()
    query, model_version = run(svc.embed_image(image=image))
    assert model_version == built["model_version"]
    hits = run(svc.search_image(image=image, k=10, collapse=False)).hits
    vectors = svc.backend.indexes.newest.vectors
    exact_scores, _ = exact_search(vectors, query[None], 10)
    true = [float(vectors[h.row] @ query) for h in hits]
    assert len({h.row for h in hits}) == 10
    assert true == pytest.approx(exact_scores[0].tolist(), abs=1e-5)  # the top 10, up to float ties
    assert [h.score for h in hits] == pytest.approx(true, abs=1e-5)
    products = run(svc.search_image(image=image, k=5)).hits
    assert len(products) == 5 and len({h.product_id for h in products}) == 5

    pid = rows[0]["product_id"]
    similar = run(svc.similar(product_id=pid, k=5)).hits
    assert len(similar) == 5 and pid not in {h.product_id for h in similar}
    assert run(svc.similar(product_id="no-such-product")) is None


@pytest.mark.slow
def test_a_build_that_dies_before_its_manifest_leaves_the_old_version_serving(built, monkeypatch):
    import mmray.index.build as build
    from mmray.storage import artifacts

    indexes = built["storage"] / "indexes"
    before = json.load(open(indexes / "current.json"))
    seen = {}

    def crash(self, *args, **kwargs):
        seen["files"] = sorted(os.listdir(self.path()))
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(artifacts.VersionWriter, "commit", crash)
    with pytest.raises(OSError, match="simulated"):
        build.build_index(built["cfg"])
    assert "vectors.npy" in seen["files"] and "manifest.json" not in seen["files"]  # only the manifest was missing
    assert json.load(open(indexes / "current.json")) == before
    assert sorted(os.listdir(indexes)) == ["current.json", before["version"]]  # the half-written folder was removed
    assert Retriever.load_current(built["store"]).version == before["version"]


@pytest.mark.slow
def test_cli_without_a_model_fails_cleanly(tmp_path, ray_session):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address  # join the test cluster: faster
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "jobs.build_index", "--set", f"storage.root={empty}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing has been published" in errors[0] and "jobs.train" in errors[0], \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert os.listdir(empty) == []
