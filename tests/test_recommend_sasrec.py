"""The SASRec sequence ranker: it learns a tiny synthetic sequence set, its mask is causal, items never
seen in training are scored from their vectors, and the Recommender falls back to the user vector."""
import numpy as np
import torch

from mmray.config import RecommendConfig, SasrecConfig
from mmray.recommend.recommender import HistoryEvent, ItemSpace, Recommender
from mmray.recommend.sasrec import SequenceRanker, build_model, fit


def _vectors(n=12, d=16, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _trained(vectors, seqs, **kw):
    cfg = SasrecConfig(dim=32, layers=1, heads=2, max_len=8, dropout=0.0, epochs=150, lr=1e-2, batch_size=8, **kw)
    model, shape = build_model(vectors.shape[1], len(vectors), cfg)
    return model, shape, fit(model, vectors, seqs, cfg)


def test_overfits_a_tiny_sequence_set_and_ranks_the_next_item_first():
    v = _vectors()
    seqs = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 0, 5]]
    model, _, losses = _trained(v, seqs)
    assert losses[-1] < 0.2 * losses[0]
    table = model.item_table(torch.from_numpy(v), torch.arange(len(v)))
    with torch.no_grad():
        for s in seqs:
            logits = model(table, torch.tensor([s[:-1]]))[0]
            assert logits.argmax(-1).tolist() == s[1:]


def test_causal_mask_a_later_item_does_not_change_earlier_states():
    v = _vectors()
    model, _ = build_model(v.shape[1], len(v), SasrecConfig(dim=32, layers=2, heads=2, max_len=8, dropout=0.0))
    model.eval()
    table = model.item_table(torch.from_numpy(v), torch.arange(len(v)))
    with torch.no_grad():
        a = model.encode(table[torch.tensor([[0, 1, 2, 3]])])
        b = model.encode(table[torch.tensor([[0, 1, 2, 7]])])
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert not torch.allclose(a[0, 3], b[0, 3], atol=1e-4)


def test_new_item_is_scored_from_its_vector_and_recommender_uses_or_falls_back():
    v = _vectors(n=13)
    train_v = v[:12]  # item 12 never appears in training
    model, shape, _ = _trained(train_v, [[0, 1, 2, 3], [4, 5, 6, 7]], seed=1)
    info = {"model": shape, "item_vectors": {"dim": 16, "model_version": None, "index": None}}
    ids = [f"i{r}" for r in range(13)]
    ranker = SequenceRanker(model, info, ids[:12])
    space = ItemSpace(v, {"id": ids, "product_id": ids, "title": ids, "category": [""] * 13})
    s = ranker.scores(space, ["i0", "i1"])
    # the new item's score is exactly its projected vector against the state
    with torch.no_grad():
        state = model.encode(ranker.table(space)[[0, 1]][None])[0, -1]
        want = float(model.proj(torch.from_numpy(v[12])) @ state)
    assert abs(s[12] - want) < 1e-4 and np.isfinite(s).all()
    assert int(np.argmax(s)) == 2
    rec = Recommender(space, RecommendConfig(ranker="sasrec", diversity=0.0), sequence=ranker)
    out, source = rec.recommend([HistoryEvent("i1", "view"), HistoryEvent("i0", "view")], k=3)
    assert source == "sasrec" and space.ids[out[0].row] == "i2"
    # a model trained on vectors of another width: the user vector ranks, with the reason kept
    other = ItemSpace(np.hstack([v, v]), space.meta)
    rec = Recommender(other, RecommendConfig(ranker="sasrec"), sequence=ranker)
    assert rec.ranker == "user_vector" and "16-d" in rec.fallback
    assert rec.recommend([HistoryEvent("i0", "view")], k=3)[1] == "user_vector"


def _ddp_worker(rank, world, port, vectors, seqs, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, _ = build_model(vectors.shape[1], len(vectors), _DDP_CFG.model_copy(update={"batch_size": 2}))
    losses = fit(torch.nn.parallel.DistributedDataParallel(model), vectors, seqs,
                 _DDP_CFG.model_copy(update={"batch_size": 2}), rank=rank, world=world)
    torch.save({"state": model.state_dict(), "losses": losses}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


_DDP_CFG = SasrecConfig(dim=16, layers=1, heads=2, max_len=6, dropout=0.0, epochs=4, lr=1e-2)


def test_two_ddp_ranks_train_exactly_as_one_process_on_their_union(tmp_path):
    """Two gloo ranks with batches of 2 (every other batch each, gradients averaged by DDP) take the same steps
    as one process with batches of 4: all sequences have one length, so the mean of the two batch means is the
    mean over the union."""
    import socket

    import torch.multiprocessing as mp

    v = _vectors()
    rng = np.random.default_rng(3)
    seqs = [rng.permutation(12)[:5].tolist() for _ in range(8)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, v, seqs, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    one, _ = build_model(v.shape[1], len(v), _DDP_CFG.model_copy(update={"batch_size": 4}))
    one_losses = fit(one, v, seqs, _DDP_CFG.model_copy(update={"batch_size": 4}))
    two, _ = build_model(v.shape[1], len(v), _DDP_CFG.model_copy(update={"batch_size": 2}))
    fit(two, v, seqs, _DDP_CFG.model_copy(update={"batch_size": 2}))  # one process, batches of 2: other steps

    def gap(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap(ranks[0]["state"], ranks[1]["state"]) == 0.0  # DDP keeps the ranks identical
    # the same steps: per epoch the ranks' mean loss is the one process's; the weights agree up to float noise
    # that Adam amplifies on near-zero gradients (measured 0.007 against 0.13 for batches of 2)
    np.testing.assert_allclose(np.mean([r["losses"] for r in ranks], axis=0), one_losses, rtol=1e-3)
    assert gap(ranks[0]["state"], one.state_dict()) < 0.2 * gap(two.state_dict(), one.state_dict())
