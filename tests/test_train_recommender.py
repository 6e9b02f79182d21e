"""`jobs.train_recommender` end to end on a tiny index and a synthetic event set (Ray Train, in the test
session's Ray): no events is a one-line error and publishes nothing; two item chains (A->B->C->D and
E->F->G->H) recorded as events are learned, published as `models/sasrec`, loaded by `load_sequence_ranker`
and followed by the Recommender. Also the mapping of event sequences onto the index (no Ray)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LUMA_CATALOG, publish_model

from mmray.config import SasrecConfig
from mmray.recommend.recommender import HistoryEvent, ItemSpace, Recommender


def test_training_data_maps_sequences_onto_the_index():
    from mmray.recommend.train import TrainingDataError, training_data

    ids = ["a1", "a2", "b1", "c1"]
    space = ItemSpace(np.eye(4) + 0.1, {"id": ids, "product_id": ["A", "A", "B", "C"], "title": ids,
                                        "category": [""] * 4})
    cfg = SasrecConfig(min_events=2, min_sequences=2)
    got_ids, vectors, rows = training_data(
        [["a1", "a1", "gone", "b1"],  # a repeat counts once, an item not in the index is skipped
         ["C", "A"],  # product ids: their rows' mean vector
         ["b1", "gone"]], space, cfg)  # one known event left: below min_events
    assert got_ids == ["A", "C", "a1", "b1"]
    assert rows == [[2, 3], [1, 0]]
    np.testing.assert_allclose(vectors[0], space.item_vector("A"), atol=1e-6)
    np.testing.assert_allclose(vectors[3], space.vectors[2], atol=1e-6)
    with pytest.raises(TrainingDataError, match="1 training sequences .*min_sequences is 3"):
        training_data([["a1", "b1"]], space, SasrecConfig(min_sequences=3))


@pytest.fixture(scope="module")
def events_index(tmp_path_factory, ray_session):
    """12 distinct Luma products, an untrained tiny model, its index, an empty event store; the config path."""
    import yaml

    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("sasrec")
    rows = [json.loads(line) for line in LUMA_CATALOG.read_text().splitlines()[::8][:12]]
    assert len({r["product_id"] for r in rows}) == 12
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    (tmp / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"data": {"catalog": str(tmp / "catalog.jsonl"), "name": "luma", "image_size": 64, "holdout_fraction": 0.0,
                    "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_batch_size": 16, "embed_concurrency": 1},
           "train": {"cpus_per_worker": 1},
           "recommend": {"event_store": f"sqlite:///{tmp / 'events.sqlite'}", "diversity": 0.0,
                         "sasrec": {"dim": 32, "layers": 1, "heads": 2, "max_len": 8, "dropout": 0.0, "epochs": 60,
                                    "lr": 0.01, "batch_size": 8, "min_sequences": 5}},
           "storage": {"root": str(tmp / "artifacts")}}
    cfg_path = tmp / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    store = ArtifactStore.from_config(cfg.storage)
    publish_model(store, build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    build_index(cfg)
    return cfg_path, cfg, store, [r["id"] for r in rows]


@pytest.mark.slow
def test_train_job_refuses_no_events_then_learns_the_chains_and_publishes(events_index, capsys):
    from jobs import train_recommender as job
    from mmray.index.retriever import Retriever
    from mmray.recommend.events import EventStore
    from mmray.recommend.sasrec import SASREC_KIND, load_sequence_ranker

    cfg_path, cfg, store, ids = events_index
    assert job.main(["--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no events" in err and "Traceback" not in err
    assert store.current(SASREC_KIND) is None

    chains = [ids[0:4], ids[4:8]]
    events = EventStore.from_config(cfg.recommend)
    rng = np.random.default_rng(0)
    for u in range(24):
        chain = chains[u % 2]
        start = int(rng.integers(0, 2))  # A B C D or B C D
        events.add(f"user{u}", [{"type": "view", "item_id": i} for i in chain[start:]])
    events.close()
    assert job.main(["--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert store.current(SASREC_KIND) == summary["sasrec"]
    assert summary["history"][-1] < 0.5 * summary["history"][0]

    ranker, why = load_sequence_ranker(store)
    assert why is None and ranker.version.endswith(summary["sasrec"])
    assert sorted(ranker.offset_of) == sorted(ids[:8])  # the items that occurred; the other 4 are new to it
    space = ItemSpace.from_retriever(Retriever.load_current(store, cfg.index))
    rec = Recommender(space, cfg.recommend.model_copy(update={"ranker": "sasrec"}), sequence=ranker)
    assert rec.ranker == "sasrec"
    for chain in chains:
        for n in (1, 2, 3):
            history = [HistoryEvent(i, "view") for i in reversed(chain[:n])]  # newest first
            results, source = rec.recommend(history, k=3)
            assert source == "sasrec"
            assert space.ids[results[0].row] == chain[n], (chain[:n], [space.ids[r.row] for r in results])
            assert not {space.ids[r.row] for r in results} & set(chain[:n])
