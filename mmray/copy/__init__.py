"""Product copy with guardrails: catalog facts -> engine (grounded, transformers, openai, vllm) ->
JSON schema -> claims checked against the catalog.

  facts       ProductFacts, the Catalog table they come from, instruction-like text removed
  schema      the request, the JSON an LLM must return, repair
  guardrails  claims (colour, material, size, audience, price, category, features) vs facts; banned claims; lengths
  engines     the engines and the vLLM LLMConfig
  copywriter  the Copywriter used by /v1/copy and jobs.generate_copy
"""
from mmray.copy.copywriter import ENGINES, CopyError, Copywriter, build_messages
from mmray.copy.facts import FACT_COLUMNS, Catalog, ProductFacts, strip_instructions
from mmray.copy.guardrails import Guardrails, Verdict
from mmray.copy.schema import CopyDraft, CopyRequest, parse_draft

__all__ = ["ENGINES", "FACT_COLUMNS", "Catalog", "CopyDraft", "CopyError", "CopyRequest", "Copywriter", "Guardrails",
           "ProductFacts", "Verdict", "build_messages", "parse_draft", "strip_instructions"]
