"""ClipLoss / SigLipLoss against naive loops, hand-checked masking, and the 2-worker gathered loss."""
from __future__ import annotations

import math
import os
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from mmray.loss import ClipLoss, SigLipLoss, same_group_mask

E = math.e


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def naive_clip(image, text, scale: float, groups=None) -> float:
    """Symmetric InfoNCE, one explicit softmax per row (images) and per column (texts)."""
    n = len(image)
    s = [[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)]

    def allowed(i, j):  # the positive pair, or a pair from different groups
        return i == j or groups is None or groups[i] != groups[j]

    loss_i = 0.0
    for i in range(n):
        denom = sum(math.exp(s[i][j]) for j in range(n) if allowed(i, j))
        loss_i += -math.log(math.exp(s[i][i]) / denom)
    loss_t = 0.0
    for j in range(n):  # text j against every image
        denom = sum(math.exp(s[i][j]) for i in range(n) if allowed(i, j))
        loss_t += -math.log(math.exp(s[j][j]) / denom)
    return (loss_i / n + loss_t / n) / 2


def naive_siglip(image, text, scale: float, bias: float, groups=None) -> float:
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j and groups is not None and groups[i] == groups[j]:
                continue  # same product: neither positive nor negative
            z = 1.0 if i == j else -1.0
            logit = scale * float(image[i] @ text[j]) + bias
            total += math.log(1.0 + math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / n


# --------------------------------------------------------------------------- single process


@pytest.mark.parametrize("groups", [None, [0, 1, 1, 2, 0, 3]])
def test_clip_loss_matches_naive_loop(groups):
    image, text = _unit(6, 8, 1), _unit(6, 8, 2)
    logit_scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    g = None if groups is None else torch.tensor(groups)
    got = ClipLoss()(image, text, logit_scale, g)
    assert got.item() == pytest.approx(naive_clip(image, text, 10.0, groups), rel=1e-12)


def test_clip_loss_grouping_changes_loss_only_when_groups_share():
    image, text = _unit(5, 8, 3), _unit(5, 8, 4)
    scale = torch.tensor(0.0, dtype=torch.float64)
    plain = ClipLoss()(image, text, scale)
    distinct = ClipLoss()(image, text, scale, torch.arange(5))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-12)
    shared = ClipLoss()(image, text, scale, torch.tensor([7, 7, 1, 2, 3]))
    assert shared.item() < plain.item()  # fewer negatives -> smaller loss


def test_clip_loss_masking_hand_checked_3x3():
    # image = I, so logits = image @ text.T = text.T; choose text = M.T to get logits M (scale 1).
    m = torch.tensor([[2.0, 1.0, 0.0],
                      [0.0, 3.0, 1.0],
                      [1.0, 0.0, 1.0]], dtype=torch.float64)
    image, text = torch.eye(3, dtype=torch.float64), m.T.clone()
    groups = torch.tensor([0, 0, 1])  # rows 0 and 1: same product -> (0,1), (1,0) not negatives
    # image rows: row 0 keeps columns {0, 2}, row 1 keeps {1, 2}, row 2 keeps all
    img = (math.log(E**2 + E**0) - 2) + (math.log(E**3 + E**1) - 3) + (math.log(E**1 + E**0 + E**1) - 1)
    # text rows = columns of M: col 0 = [2, 0, 1] keeps rows {0, 2}; col 1 = [1, 3, 0] keeps {1, 2}; col 2 all
    txt = (math.log(E**2 + E**1) - 2) + (math.log(E**3 + E**0) - 3) + (math.log(E**0 + E**1 + E**1) - 1)
    expected = (img / 3 + txt / 3) / 2
    zero = torch.tensor(0.0, dtype=torch.float64)
    assert ClipLoss()(image, text, zero, groups).item() == pytest.approx(expected, rel=1e-12)
    assert naive_clip(image, text, 1.0, groups.tolist()) == pytest.approx(expected, rel=1e-12)
    # a masked logit (M[0, 1] and M[1, 0]) has no influence at all
    m2 = m.clone()
    m2[0, 1], m2[1, 0] = 50.0, -50.0
    assert ClipLoss()(image, m2.T.clone(), zero, groups).item() == pytest.approx(expected, rel=1e-12)
    # without groups the masked pairs count again
    unmasked = ((math.log(E**2 + E**1 + E**0) - 2) + (math.log(E**0 + E**3 + E**1) - 3)
                + (math.log(E**1 + E**0 + E**1) - 1)
                + (math.log(E**2 + E**0 + E**1) - 2) + (math.log(E**1 + E**3 + E**0) - 3)
                + (math.log(E**0 + E**1 + E**1) - 1)) / 6
    assert ClipLoss()(image, text, zero).item() == pytest.approx(unmasked, rel=1e-12)


def test_same_group_mask_excludes_positive_with_offset():
    rows = torch.tensor([1, 2])
    cols = torch.tensor([1, 3, 1, 2])
    mask = same_group_mask(rows, cols, row_offset=2)  # local rows are global rows 2, 3
    assert mask.tolist() == [[True, False, False, False],
                             [False, False, False, False]]


@pytest.mark.parametrize("groups", [None, [0, 1, 1, 2, 0, 3]])
def test_siglip_loss_matches_naive_loop(groups):
    image, text = _unit(6, 8, 5), _unit(6, 8, 6)
    scale, bias = torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)
    g = None if groups is None else torch.tensor(groups)
    got = SigLipLoss()(image, text, scale, bias, g)
    assert got.item() == pytest.approx(naive_siglip(image, text, 10.0, -2.5, groups), rel=1e-12)


# --------------------------------------------------------------------------- two workers (gloo)

WORLD, LOCAL = 2, 4
GROUPS = [0, 1, 1, 2, 0, 3, 2, 5]  # groups 0 and 2 straddle the two workers; group 1 is local to rank 0
SCENARIOS = {  # name -> (kind, local_loss, gather_with_grad, groups?)
    "clip_local_grad": ("clip", True, True, False),
    "clip_local_grad_groups": ("clip", True, True, True),
    "clip_global_nograd": ("clip", False, False, False),
    "clip_global_nograd_groups": ("clip", False, False, True),
    "siglip_grad_groups": ("siglip", None, True, True),
}


def _run(kind, local_loss, with_grad, use_groups, image, text, scale, bias, rank=0, world=1):
    image = image.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    n = image.shape[0]
    groups = torch.tensor(GROUPS[rank * n:(rank + 1) * n]) if use_groups else None
    if kind == "clip":
        loss = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)(
            image, text, scale, groups)
    else:
        loss = SigLipLoss(rank=rank, world_size=world, gather_with_grad=with_grad)(image, text, scale, bias, groups)
    loss.backward()
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad,
            "bias": bias.grad if bias.grad is not None else torch.zeros_like(bias)}


def _worker(rank: int, store: str, outdir: str, image, text, scale, bias) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    # A file store, not tcp://127.0.0.1:<free port>: a port found free and then closed can be taken by
    # another process (a Ray worker of the session) before rank 0 binds it, and rank 1 then talks to it.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
        out = {name: _run(*spec, image[sl], text[sl], scale, bias, rank=rank, world=WORLD)
               for name, spec in SCENARIOS.items()}
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank closes its connections while the other still uses them
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_worker_results(tmp_path_factory):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")

    image, text = _unit(WORLD * LOCAL, 8, 11), _unit(WORLD * LOCAL, 8, 12)
    scale, bias = torch.tensor(math.log(7.0), dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)
    outdir = str(tmp_path_factory.mktemp("dist"))
    store = os.path.join(outdir, "store")
    mp.spawn(_worker, args=(store, outdir, image, text, scale, bias), nprocs=WORLD, join=True)
    ranks = [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]
    single = {name: _run(*spec, image, text, scale, bias) for name, spec in SCENARIOS.items()}
    return ranks, single


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["clip_local_grad", "clip_local_grad_groups", "siglip_grad_groups"])
def test_gathered_local_loss_equals_single_process(two_worker_results, name):
    """local loss + differentiable gather: mean over ranks = full-batch loss; all_gather's backward
    sums every rank's contribution, so each rank's feature grads are world_size x the full-batch
    grads of its slice; DDP's averaging of the scalar grads gives the full-batch grad."""
    ranks, single = two_worker_results
    ref = single[name]
    _close(torch.stack([r[name]["loss"] for r in ranks]).mean(), ref["loss"])
    for rank, res in enumerate(ranks):
        sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
        _close(res[name]["image"] / WORLD, ref["image"][sl])
        _close(res[name]["text"] / WORLD, ref["text"][sl])
    for p in ("scale", "bias"):
        _close(torch.stack([r[name][p] for r in ranks]).mean(), ref[p])


@pytest.mark.parametrize("name", ["clip_global_nograd", "clip_global_nograd_groups"])
def test_gathered_global_loss_without_grad_gather(two_worker_results, name):
    """Every rank computes the whole-batch loss; the spliced-in local tensor gets exactly its
    slice of the full-batch gradient (no cross-rank sum)."""
    ranks, single = two_worker_results
    ref = single[name]
    for rank, res in enumerate(ranks):
        sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
        _close(res[name]["loss"], ref["loss"])
        _close(res[name]["image"], ref["image"][sl])
        _close(res[name]["text"], ref["text"][sl])
        _close(res[name]["scale"], ref["scale"])


def test_single_process_groups_equal_naive_on_full_batch(two_worker_results):
    """The reference used above is itself right: the full-batch masked loss matches the naive loop."""
    _, single = two_worker_results
    image, text = _unit(WORLD * LOCAL, 8, 11), _unit(WORLD * LOCAL, 8, 12)
    assert single["clip_local_grad_groups"]["loss"].item() == pytest.approx(
        naive_clip(image, text, 7.0, GROUPS), rel=1e-10)
    assert single["siglip_grad_groups"]["loss"].item() == pytest.approx(
        naive_siglip(image, text, 7.0, -1.5, GROUPS), rel=1e-10)
