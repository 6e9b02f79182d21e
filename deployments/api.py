"""HTTP schemas and error plumbing for the /v1 API: typed requests, one JSON error shape.

Every error is `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.
"""
from __future__ import annotations

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmray.index.filters import SearchFilters


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable", 504: "timeout"}


def install_error_handlers(app) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return error_response(500, "internal", f"internal error ({type(exc).__name__})")


def describe_validation(errors, prefix: str | None = None) -> str:
    """One line per error. Request errors drop their leading `body`/`query`/`path`; with `prefix`
    the whole location is kept under it. A model-level error has an empty location."""
    parts = []
    for err in errors:
        loc = tuple(str(p) for p in err.get("loc") or ())
        if prefix is None:
            where = ".".join(loc[1:]) or (loc[0] if loc else "body")
        else:
            where = ".".join((prefix, *loc))
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)[:1000]


def parse_filters(raw: str | None) -> SearchFilters | None:
    """Filters sent as a JSON form field (multipart routes)."""
    if not raw:
        return None
    try:
        return SearchFilters.model_validate(json.loads(raw))
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_request", f"filters: not valid JSON ({e.msg})") from None
    except ValidationError as e:
        raise ApiError(422, "invalid_request", describe_validation(e.errors(), "filters")) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Strict):
    query: str = Field(..., min_length=1, description="Text query")
    k: int = Field(10, ge=1, description="Results wanted (at most serve.max_k)")
    filters: SearchFilters | None = None
    hybrid: bool | None = Field(None, description="Fuse BM25 with vectors (default: index.hybrid)")
    collapse: bool = Field(True, description="One result per product (best variant)")
    rerank: bool | None = Field(None, description="Rerank the top candidates (default: rerank.enabled); true "
                                "answers 409 rerank_unavailable where no reranker can serve the index")


class EmbedRequest(Strict):
    text: str = Field(..., min_length=1)


class Result(BaseModel):
    product_id: str
    id: str = Field(description="The best-matching variant (item) id")
    title: str
    price: float | None
    score: float
    retrievers: list[str] = Field(description="Which retrievers found it: vector, lexical")
    image_url: str | None = Field(description="The item's photo, served by the app; null for a text-only item")
    variants: int = Field(description="Items (colours, sizes) of this product that pass the filters")
    explanation: dict | None = Field(None, description="Reranked results: {matched: [{attribute, value}], "
                                     "attention: [[...]] over the photo (sums to 1), grid: [h, w]}")


class SearchResponse(BaseModel):
    results: list[Result]
    index_version: str
    took_ms: float
    reranked: bool = Field(False, description="The results are in the reranker's order")


class EmbedResponse(BaseModel):
    vector: list[float]
    dim: int
    model_version: str


# --------------------------------------------------------------------------- creatives (issue 18)
class CreativeRequest(Strict):
    product_id: str = Field(..., min_length=1, max_length=200, description="A product or item id")
    formats: list[str] = Field(["1200x628"], min_length=1, max_length=32,
                               description="Channel formats (creative.formats names, or WIDTHxHEIGHT)")
    style: str | None = Field(None, description="gradient, pattern, palette or diffusion (default: creative.style)")
    with_copy: bool = Field(True, description="Carry the headline copy (price and button are always shown)")
