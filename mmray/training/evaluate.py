"""Held-out evaluation: image<->text retrieval, zero-shot category accuracy, query retrieval.

`EvalInputs` is built once on the driver from the test split (split by product). Inputs of a
locked tower are stored as tower features, so evaluating a new set of projections costs two
matrix products; inputs of a trainable tower are stored raw and encoded with the current model.
Thin data never crashes: with no held-out items, no held-out images (text-only items), or fewer than
`MIN_QUERIES` queries, the metrics that need them are left out with a warning and a `skipped` /
`image_skipped` / `query_skipped` entry saying why. Image-side metrics count only items with images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mmray.catalog.captions import audience_phrase, category_noun
from mmray.config import CaptionConfig
from mmray.embedder import Embedder, fuse, item_image_vectors
from mmray.evalset import build_queries, relevance_matrix
from mmray.metrics import hit_rate_at_k, mrr, retrieval_report
from mmray.model import unwrap_model

log = logging.getLogger(__name__)
MIN_QUERIES = 3  # fewer held-out queries than this say nothing: the query metrics are skipped
NO_IMAGES = "no held-out item has an image: no image-text metrics"


@dataclass
class EvalInputs:
    item_ids: list[str]
    image_owner: np.ndarray       # (M,) item index of each image
    images: object                # (M, D) features, or list of M image bytes
    captions: object              # (N,) first caption of each item: features or strings
    product_texts: object         # (N,) rich product texts
    queries: object               # (Q,) held-out query texts
    relevance: np.ndarray         # (Q, N) graded relevance
    class_prompts: object         # (C,) "a photo of a <noun> <audience>"
    item_class: np.ndarray        # (N,) class index of each item
    image_weight: float
    query_texts: list[str]        # (Q,) the query texts, also when `queries` holds their features
    query_skipped: str = ""       # why there are no queries (too few held-out queries), or ""


def class_prompt(item: dict, cfg: CaptionConfig | None = None) -> str:
    noun = category_noun(item.get("category") or "", (cfg or CaptionConfig()).nouns)
    audience = audience_phrase(item.get("gender") or "", everyone="")
    return " ".join(p for p in ("a photo of", "an" if noun[:1] in "aeiou" else "a", noun, audience) if p)


def build_eval_inputs(test_items: list[dict], embedder: Embedder | None, image_weight: float,
                      product_text_tokens: int = 128, caption: CaptionConfig | None = None) -> EvalInputs:
    """Encode what locked towers allow (when `embedder` is given and the tower is locked).

    `caption` words the queries and class prompts as the captions were (default: `CaptionConfig()`)."""
    owner, images = [], []
    for i, item in enumerate(test_items):
        for image in item["images"]:
            owner.append(i)
            images.append(bytes(image))
    if test_items and not images:
        log.warning("%s (%d text-only test items)", NO_IMAGES, len(test_items))
    prompts = sorted({class_prompt(it, caption) for it in test_items})
    queries, skipped = build_queries(test_items, caption), ""
    if len(queries) < MIN_QUERIES:
        skipped = (f"{len(queries)} held-out queries from {len(test_items)} test items "
                   f"(fewer than {MIN_QUERIES}): no query metrics")
        log.warning("%s; a larger holdout_fraction or richer facets (colour, attributes) give more", skipped)
        queries = []
    ids = [it["id"] for it in test_items]
    query_texts = [q.text for q in queries]
    texts = {"captions": [it["captions"][0] for it in test_items], "product_texts": [it["text"] for it in test_items],
             "queries": query_texts, "class_prompts": prompts}
    model = embedder.model if embedder else None
    if model is not None and model.text_cacheable:
        texts = {k: embedder.text_features(v, product_text_tokens if k == "product_texts" else None) if v else v
                 for k, v in texts.items()}
    if model is not None and model.image_cacheable and images:
        images = embedder.image_features(images)
    return EvalInputs(ids, np.array(owner, dtype=np.int64), images, relevance=relevance_matrix(queries, ids),
                      item_class=np.array([prompts.index(class_prompt(it, caption)) for it in test_items]),
                      image_weight=image_weight, query_texts=query_texts, query_skipped=skipped, **texts)


@torch.no_grad()
def evaluate(model: torch.nn.Module, ev: EvalInputs, product_text_tokens: int = 128) -> dict[str, float | str]:
    """Metrics of `model` on `ev` (names match the per-epoch report); what thin data cannot give is
    left out, with `skipped` (no held-out items) or `query_skipped` (too few queries) saying why."""
    if not ev.item_ids:
        return {"skipped": "no held-out (test-split) items: no held-out metrics"}
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    emb = Embedder(model)

    def texts(x, tokens=None):
        return model.project_text(x).numpy() if isinstance(x, torch.Tensor) else emb.embed_texts(x, tokens)

    cap, prod = texts(ev.captions), texts(ev.product_texts, product_text_tokens)
    qry = texts(ev.queries) if len(ev.query_texts) else None
    cls = texts(ev.class_prompts)
    if len(ev.image_owner) == 0:  # text-only items alone: no image side to measure
        img = np.zeros((0, prod.shape[1]), np.float32)
    elif isinstance(ev.images, torch.Tensor):
        img = model.project_image(ev.images).numpy()
    else:
        img = emb.embed_images(ev.images)
    model.train(was_training)

    n = len(ev.item_ids)
    out = image_text_metrics(img, cap, cls, ev.image_owner, ev.item_class)
    if qry is None:
        out["query_skipped"] = ev.query_skipped or "no held-out queries"
        return out
    items = fuse(item_image_vectors(img, ev.image_owner, n), prod, ev.image_weight)  # text-only items: text
    out.update(retrieval_report(qry @ items.T, ev.relevance, "query_", ks=(10,)))
    return out


def image_text_metrics(img: np.ndarray, cap: np.ndarray, cls: np.ndarray, image_owner: np.ndarray,
                       item_class: np.ndarray) -> dict[str, float | str]:
    """Caption<->image retrieval and zero-shot accuracy over the items that have images (text-only
    items have nothing to find or be found by); `image_skipped` when none has one.

    img (M, E) image vectors, `image_owner` (M,) their item; cap (N, E) captions; cls (C, E) prompts."""
    if len(image_owner) == 0:
        return {"image_skipped": NO_IMAGES}
    pictured = np.unique(image_owner)  # (P,) items with at least one image
    owner_rel = (image_owner[None, :] == pictured[:, None]).astype(np.int8)  # (P items, M images)
    t2i = cap[pictured] @ img.T
    i2t = t2i.T
    out: dict[str, float | str] = {}
    for k in (1, 5, 10):
        out[f"t2i_R@{k}"] = hit_rate_at_k(t2i, owner_rel, k)
        out[f"i2t_R@{k}"] = hit_rate_at_k(i2t, owner_rel.T, k)
    out["t2i_MRR"], out["i2t_MRR"] = mrr(t2i, owner_rel), mrr(i2t, owner_rel.T)
    predicted = (img @ cls.T).argmax(axis=1)
    out["zeroshot_acc"] = float(np.mean(predicted == item_class[image_owner]))
    return out
