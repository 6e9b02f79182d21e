"""Catalog-wide copy with the same Copywriter the server uses: Ray Data over the products of the
current dataset, one row per (product, kind, variant) with its text and guardrail verdict, written
as Parquet into a new version of `copy/<dataset name>`.

With `copy.engine: vllm` the batch generation is `ray.data.llm`'s vLLM processor (run the job with
the LLM environment's Python, `make llm-env`): Copywriter actors write the prompts, the processor
generates, invalid answers get their one retry in a second pass, and Copywriter actors put every
draft through the guardrails, as the server does. Every other engine runs the whole Copywriter in
an actor pool.
"""
from __future__ import annotations

import importlib.util
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from mmray.config import MmrayConfig
from mmray.config.copy import CopyConfig
from mmray.copy.schema import CopyRequest, parse_draft
from mmray.dataset import current_dataset
from mmray.storage import ArtifactError

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema([("product_id", pa.string()), ("engine", pa.string()), ("kind", pa.string()),
                           ("variant", pa.int32()), ("text", pa.string()), ("passed", pa.bool_()),
                           ("reasons", pa.string()), ("removed", pa.string()), ("raw", pa.string())])


def copy_kind(dataset_name: str) -> str:
    return f"copy/{dataset_name}"


class _CatalogActor:
    """A Copywriter over the dataset `dataset_ref`, exemplars from the current index (Ray Data actor base)."""

    def __init__(self, cfg: MmrayConfig, dataset_ref: str, kinds: list[str], n_variants: int):
        from mmray.copy.copywriter import Copywriter
        from mmray.copy.service import load_catalog
        from mmray.index.retriever import IndexLoadError, Retriever
        from mmray.storage import ArtifactStore

        store = ArtifactStore.from_config(cfg.storage)
        self.writer = Copywriter(load_catalog(store, dataset_ref), cfg.copy, store)
        self.kinds, self.n = kinds, n_variants
        try:
            self.retriever = Retriever.load_current(store, cfg.index) if cfg.copy.exemplars else None
        except IndexLoadError:
            self.retriever = None  # no index yet: no exemplars

    def _similar(self, pid: str) -> list[str]:
        if self.retriever is None:
            return []
        try:
            return [h.product_id for h in self.retriever.similar(pid, self.writer.cfg.exemplars)]
        except KeyError:
            return []

    def request(self, pid: str) -> CopyRequest:
        return CopyRequest(product_id=pid, kinds=self.kinds, n_variants=self.n)


def _append(rows: dict, pid: str, engine: str, outputs: list[dict], raws: list[str], first_variant: int = 0) -> None:
    for o in outputs:
        for i, v in enumerate(o["variants"]):
            for key, value in (("product_id", pid), ("engine", engine), ("kind", o["kind"]), ("variant", first_variant + i),
                               ("text", v["text"]), ("passed", v["passed"]), ("reasons", json.dumps(v["reasons"])),
                               ("removed", json.dumps(v["removed"])), ("raw", raws[i] if i < len(raws) else "")):
                rows[key].append(value)


class CopyBatch(_CatalogActor):
    """Ray Data actor: the whole Copywriter (any engine that runs in this process or behind an endpoint)."""

    def __call__(self, batch: dict) -> dict:
        rows = {name: [] for name in OUTPUT_SCHEMA.names}
        for pid in batch["product_id"]:
            pid = str(pid)
            out = self.writer.write(self.request(pid), self._similar(pid))
            _append(rows, pid, out["engine"], out["outputs"], out["raw"])
        return rows


# --------------------------------------------------------------------------- vllm: ray.data.llm


class CopyPrompts(_CatalogActor):
    """Ray Data actor: one chat per (product, variant), as the server's Copywriter would send it."""

    def __call__(self, batch: dict) -> dict:
        rows = {"product_id": [], "variant": [], "chat": [], "seed": []}
        for pid in batch["product_id"]:
            pid = str(pid)
            chat = json.dumps(self.writer.messages(self.request(pid), self._similar(pid)))
            for i in range(self.n):
                for key, value in (("product_id", pid), ("variant", i), ("chat", chat),
                                   ("seed", self.writer.cfg.seed + i)):
                    rows[key].append(value)
        return rows


class CopyVerdicts(_CatalogActor):
    """Ray Data actor: each generated draft through the guardrails (rows of OUTPUT_SCHEMA)."""

    def __call__(self, batch: dict) -> dict:
        from mmray.copy.copywriter import Attempt

        rows = {name: [] for name in OUTPUT_SCHEMA.names}
        for pid, variant, raw, draft, error in zip(batch["product_id"], batch["variant"], batch["raw"],
                                                   batch["draft"], batch["error"]):
            pid = str(pid)
            req = self.request(pid).model_copy(update={"n_variants": 1})
            draft = json.loads(draft) if draft else None
            outputs = self.writer.verdicts(req, [draft], [Attempt(str(raw), str(error))])
            _append(rows, pid, "vllm", outputs, [str(raw)], first_variant=int(variant))
        return rows


def vllm_processor_config(cfg: CopyConfig) -> dict:
    """Keyword arguments of `ray.data.llm.vLLMEngineProcessorConfig` for the copy model, from the
    same `copy.vllm` settings as the served LLM app (a plain dict: testable without vLLM)."""
    from mmray.copy.engines import vllm_llm_config

    llm, v = vllm_llm_config(cfg), cfg.vllm
    out = {"model_source": llm["model_loading_config"]["model_source"], "engine_kwargs": llm["engine_kwargs"],
           "batch_size": v.batch_size, "concurrency": v.concurrency,
           **{stage: {"num_cpus": v.stage_num_cpus} for stage in ("chat_template_stage", "tokenize_stage", "detokenize_stage")}}
    if v.accelerator == "cpu":  # one CPU bundle per engine, no GPU (the default bundle asks for one)
        out["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    elif v.accelerator_type:
        out["accelerator_type"] = v.accelerator_type
    if v.runtime_env:
        out["runtime_env"] = dict(v.runtime_env)
    return out


def sampling_params(cfg: CopyConfig, seed: int, kinds: list[str]) -> dict:
    """vLLM sampling parameters of one chat, structured as in the served engine (`copy.vllm.structured_output`)."""
    from mmray.copy.schema import json_schema_for

    out = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": int(seed)}
    if cfg.vllm.structured_output == "schema":
        out["structured_outputs"] = {"json": json_schema_for(kinds)}
    elif cfg.vllm.structured_output == "json_object":
        out["structured_outputs"] = {"json_object": True}
    return out


def _parsed(kinds: list[str]):
    def parse(row: dict) -> dict:
        draft, error, _ = parse_draft(row["raw"], kinds)
        return {**row, "draft": "" if draft is None else json.dumps({k: draft.get(k) for k in kinds}), "error": error}
    return parse


def _vllm_outputs(cfg: MmrayConfig, ds, dataset_ref: str, kinds: list[str], n_variants: int):
    """Rows of OUTPUT_SCHEMA for the products in `ds`, generated by ray.data.llm's vLLM processor."""
    import ray

    from mmray.copy.copywriter import retried_raw, retry_messages, retry_seed
    from mmray.copy.engines import EngineError

    # ray.data.llm imports without vLLM; its engine actors would die one by one at start
    if importlib.util.find_spec("vllm") is None:
        raise EngineError("the vllm engine's batch job needs vLLM, which is not in this environment: run it with "
                          "the LLM environment's Python (make llm-env; .llm-venv/bin/python -m jobs.generate_copy)")
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    copy_cfg = cfg.copy
    cpus = copy_cfg.vllm.stage_num_cpus  # every step but the engine: small, or they wait behind its bundle
    light = {"compute": ray.data.ActorPoolStrategy(size=1), "num_cpus": cpus, "batch_format": "numpy",
             "fn_constructor_args": (cfg, dataset_ref, kinds, n_variants)}

    def generate(rows, keep: tuple[str, ...] = ()):
        """`rows` (product_id, variant, chat as JSON, seed, ...) with the model's answer as `raw`."""
        return build_processor(
            vLLMEngineProcessorConfig(**vllm_processor_config(copy_cfg)),
            preprocess=lambda row: {**row, "messages": json.loads(row["chat"]),
                                    "sampling_params": sampling_params(copy_cfg, row["seed"], kinds)},
            postprocess=lambda row: {"product_id": row["product_id"], "variant": row["variant"], "chat": row["chat"],
                                     **{k: row[k] for k in keep}, "raw": row["generated_text"] or ""},
            preprocess_map_kwargs={"num_cpus": cpus}, postprocess_map_kwargs={"num_cpus": cpus})(rows)

    prompts = ds.map_batches(CopyPrompts, batch_size=8, **light)
    first = generate(prompts).map(_parsed(kinds), num_cpus=cpus).materialize()
    invalid = first.filter(lambda row: not row["draft"], num_cpus=cpus)
    n_invalid = invalid.count()
    if n_invalid:  # the one retry, told what was wrong, in a second pass
        log.info("retrying %d invalid answers", n_invalid)

        def retry(row: dict) -> dict:
            chat = retry_messages(json.loads(row["chat"]), row["raw"], row["error"])
            return {"product_id": row["product_id"], "variant": row["variant"], "chat": json.dumps(chat),
                    "seed": retry_seed(copy_cfg, int(row["variant"])), "first": row["raw"]}

        def joined(row: dict) -> dict:
            return {**_parsed(kinds)(row), "raw": retried_raw(row["first"], row["raw"])}

        retried = generate(invalid.map(retry, num_cpus=cpus), keep=("first",)).map(joined, num_cpus=cpus)
        first = first.filter(lambda row: bool(row["draft"]), num_cpus=cpus).union(retried.drop_columns(["first"], num_cpus=cpus))
    return first.map_batches(CopyVerdicts, batch_size=16, **light)


def generate_copy(cfg: MmrayConfig, kinds: list[str], n_variants: int = 1, limit: int | None = None) -> dict:
    """Copy for every product (or the first `limit`) of the current dataset; returns the manifest."""
    import ray

    dataset = current_dataset(cfg)
    store = dataset.store
    from mmray.copy.service import load_catalog

    products = load_catalog(store, dataset.ref).product_ids()[:limit]
    if not products:
        raise ArtifactError(f"{dataset.ref} has no products")
    ds = ray.data.from_items([{"product_id": p} for p in products])
    if cfg.copy.engine == "vllm":
        if cfg.copy.vllm.model_source is None and cfg.copy.model is None:  # the shipped model, as jobs.serve_llm
            from mmray.copy.engines import default_lm_folder

            cfg = cfg.model_copy(update={"copy": cfg.copy.model_copy(update={"vllm": cfg.copy.vllm.model_copy(
                update={"model_source": default_lm_folder(store)})})})
        out = _vllm_outputs(cfg, ds, dataset.ref, kinds, n_variants)
    else:
        out = ds.map_batches(CopyBatch, batch_size=8, batch_format="numpy",
                             fn_constructor_args=(cfg, dataset.ref, kinds, n_variants),
                             compute=ray.data.ActorPoolStrategy(size=1))
    with store.begin(copy_kind(cfg.data.name), config=cfg.model_dump(mode="json"),
                     parents={"dataset": dataset.ref}) as writer:
        # the writer runs beside the vllm engine's bundle: as small as the other light steps
        out.write_parquet(writer.path("outputs"), filesystem=store.fs,
                          ray_remote_args={"num_cpus": cfg.copy.vllm.stage_num_cpus} if cfg.copy.engine == "vllm" else None)
        passed = pq.read_table(writer.path("outputs"), filesystem=store.fs, columns=["passed"]).column("passed").to_pylist()
        n, passed = len(passed), sum(passed)
        version = writer.commit(extra={"engine": cfg.copy.engine, "products": len(products), "outputs": n,
                                       "passed": passed, "kinds": kinds, "n_variants": n_variants})
    return {**version.manifest, "path": version.uri}
