"""Three small fusion heads that score (query, candidate) pairs from tower features.

Every head takes one batch of B queries with K candidates each:
  q_tokens (B, Tq, E), q_mask (B, Tq)      the query's projected token states
  q_vec    (B, E)                          the query's bi-encoder embedding (unit)
  regions  (B, K, G, E), has_image (B, K)  each candidate's image regions
  tokens   (B, K, Ti, E), token_mask (B, K, Ti)
  scalars  (B, K, S)                       per-candidate features (`explain.SCALAR_FEATURES`)
and returns scores (B, K) and region weights (B, K, G) that sum to 1 (the explanation grid).
Each candidate is scored on its own (no normalisation or attention across candidates), so a
candidate's score does not depend on which other candidates are in the list or on their order.

- `cross_attention`: the query's tokens attend over the candidate's regions and text tokens (one
  joint softmax, a type embedding tells regions from tokens); the attended summary, the query and
  their product go through an MLP. Its grid is the attention mass on the regions.
- `concat_mlp`: pooled image, pooled text and query (and their products) concatenated into an MLP.
- `weighted_average`: a learned convex combination of per-modality scores (image, text, token
  max-sim, and the lexical features), times a learned scale.
The last two explain with a grid of query-region similarities, softmaxed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("cross_attention", "concat_mlp", "weighted_average")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def _region_softmax(q_vec, regions, has_image, temperature: float = 0.05) -> torch.Tensor:
    """(B, K, G) softmax over regions of cos(query, region) / temperature."""
    sim = torch.einsum("be,bkge->bkg", q_vec, F.normalize(regions, dim=-1))
    w = torch.softmax(sim / temperature, dim=-1)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(has_image.unsqueeze(-1), w, uniform)


def _pooled(regions, has_image, tokens, token_mask):
    v_img = F.normalize(regions.mean(2), dim=-1) * has_image.unsqueeze(-1).to(regions.dtype)
    v_txt = F.normalize(_masked_mean(tokens, token_mask, 2), dim=-1)
    return v_img, v_txt


class FusionHead(nn.Module):
    """Base: the sizes every head is built from (saved with its checkpoint)."""

    def __init__(self, embed_dim: int, n_scalars: int, hidden: int):
        super().__init__()
        self.embed_dim, self.n_scalars, self.hidden = embed_dim, n_scalars, hidden


class CrossAttentionHead(FusionHead):
    def __init__(self, embed_dim: int, n_scalars: int, hidden: int = 64, heads: int = 2):
        super().__init__(embed_dim, n_scalars, hidden)
        if hidden % heads:
            raise ValueError(f"rerank.hidden={hidden} is not a multiple of {heads} attention heads")
        self.heads = heads
        self.q = nn.Linear(embed_dim, hidden)
        self.k = nn.Linear(embed_dim, hidden)
        self.v = nn.Linear(embed_dim, hidden)
        self.kind = nn.Parameter(torch.zeros(2, hidden))  # 0: image region, 1: text token
        self.query = nn.Linear(embed_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden + n_scalars, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def item_keys(self, regions, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., G + Ti, D) keys and values of items: they depend on the item alone, so a server
        computes them once per (head, index) and passes them as `item_kv`."""
        keys_in = torch.cat([regions, tokens], dim=-2)
        kind = torch.cat([self.kind[0].expand(regions.shape[-2], -1), self.kind[1].expand(tokens.shape[-2], -1)])
        return self.k(keys_in) + kind, self.v(keys_in) + kind

    def forward(self, q_tokens, q_mask, q_vec, regions, has_image, tokens, token_mask, scalars, item_kv=None):
        b, k, g, _ = regions.shape
        key_mask = torch.cat([has_image.unsqueeze(-1).expand(b, k, g), token_mask], dim=2)  # (B, K, G + Ti)
        h, dh = self.heads, self.hidden // self.heads
        keys, values = self.item_keys(regions, tokens) if item_kv is None else item_kv
        qh = self.q(q_tokens).view(b, -1, h, dh)                      # (B, Tq, H, dh)
        kh = keys.view(b, k, -1, h, dh)                               # (B, K, L, H, dh)
        vh = values.view(b, k, -1, h, dh)
        logits = torch.einsum("bthd,bklhd->bkhtl", qh, kh) / math.sqrt(dh)
        logits = logits.masked_fill(~key_mask[:, :, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)                          # (B, K, H, Tq, L)
        attn = torch.nan_to_num(attn)  # a candidate with no key at all (cannot happen with text) stays 0
        out = torch.einsum("bkhtl,bklhd->bkthd", attn, vh).reshape(b, k, -1, self.hidden)  # (B, K, Tq, D)
        summary = _masked_mean(out, q_mask.unsqueeze(1).expand(b, k, -1), 2)  # (B, K, D)
        qd = self.query(q_vec).unsqueeze(1).expand(b, k, -1)
        score = self.mlp(torch.cat([summary, qd, summary * qd, scalars], dim=-1)).squeeze(-1)
        # grid: attention on the regions, averaged over heads and the query's tokens, renormalised
        tmask = q_mask[:, None, None, :, None].to(attn.dtype)
        on_regions = (attn[..., :g] * tmask).sum((2, 3))  # (B, K, G)
        total = on_regions.sum(-1, keepdim=True)
        grid = torch.where(total > 0, on_regions / total.clamp(min=1e-12), torch.full_like(on_regions, 1.0 / g))
        return score, grid


class ConcatMLPHead(FusionHead):
    def __init__(self, embed_dim: int, n_scalars: int, hidden: int = 64):
        super().__init__(embed_dim, n_scalars, hidden)
        self.proj = nn.Linear(embed_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(5 * hidden + n_scalars, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, q_tokens, q_mask, q_vec, regions, has_image, tokens, token_mask, scalars, item_kv=None):
        b, k = regions.shape[:2]
        v_img, v_txt = _pooled(regions, has_image, tokens, token_mask)
        q = self.proj(q_vec).unsqueeze(1).expand(b, k, -1)
        pi, pt = self.proj(v_img), self.proj(v_txt)
        score = self.mlp(torch.cat([q, pi, pt, q * pi, q * pt, scalars], dim=-1)).squeeze(-1)
        return score, _region_softmax(q_vec, regions, has_image)


class WeightedAverageHead(FusionHead):
    """score = scale * sum_m softmax(w)_m * s_m over per-modality scores s_m."""

    def __init__(self, embed_dim: int, n_scalars: int, hidden: int = 64):
        super().__init__(embed_dim, n_scalars, hidden)
        self.n_modalities = 3 + n_scalars  # image, text, token max-sim, then each scalar feature
        self.logits = nn.Parameter(torch.zeros(self.n_modalities))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def modality_scores(self, q_tokens, q_mask, q_vec, regions, has_image, tokens, token_mask, scalars):
        v_img, v_txt = _pooled(regions, has_image, tokens, token_mask)
        s_img = torch.einsum("be,bke->bk", q_vec, v_img)
        s_txt = torch.einsum("be,bke->bk", q_vec, v_txt)
        sim = torch.einsum("bte,bkle->bktl", F.normalize(q_tokens, dim=-1), F.normalize(tokens, dim=-1))
        sim = sim.masked_fill(~token_mask[:, :, None, :], -1.0).amax(-1)  # (B, K, Tq): best item token per query token
        s_tok = _masked_mean(sim.unsqueeze(-1), q_mask.unsqueeze(1).expand_as(sim), 2).squeeze(-1)
        return torch.cat([torch.stack([s_img, s_txt, s_tok], -1), scalars], dim=-1)  # (B, K, M)

    def forward(self, q_tokens, q_mask, q_vec, regions, has_image, tokens, token_mask, scalars, item_kv=None):
        s = self.modality_scores(q_tokens, q_mask, q_vec, regions, has_image, tokens, token_mask, scalars)
        score = self.log_scale.exp() * (s * torch.softmax(self.logits, 0)).sum(-1)
        return score, _region_softmax(q_vec, regions, has_image)


def build_head(name: str, embed_dim: int, n_scalars: int, hidden: int, seed: int = 0) -> FusionHead:
    """A head by name, its weights drawn from `seed` (the caller's global RNG left as it was)."""
    cls = {"cross_attention": CrossAttentionHead, "concat_mlp": ConcatMLPHead,
           "weighted_average": WeightedAverageHead}.get(name)
    if cls is None:
        raise ValueError(f"rerank head {name!r}: expected one of {', '.join(HEADS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(embed_dim, n_scalars, hidden)


def listwise_loss(scores: torch.Tensor, gains: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of (B, K) scores against the target distribution gains / sum(gains)
    (ListNet top-1); padded candidates (`valid` False) take no part; lists without a gain are skipped."""
    scores = scores.masked_fill(~valid, float("-inf"))
    target = gains * valid
    total = target.sum(-1, keepdim=True)
    keep = total.squeeze(-1) > 0
    if not keep.any():
        return scores.new_zeros(())
    logp = torch.log_softmax(scores[keep], dim=-1)
    p = target[keep] / total[keep]
    return -(p * logp.masked_fill(~valid[keep], 0.0)).sum(-1).mean()
