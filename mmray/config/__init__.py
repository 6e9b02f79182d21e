"""One typed config tree for every job, deployment and test.

`load_config(path, overrides)` is the only way in: it reads YAML, applies dotted overrides
(`train.lr=1e-4`) and validates the whole tree, failing with a single `ConfigError` line that
names the field and what it accepts.
"""
from __future__ import annotations

import os
import types
import typing
import warnings
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError

from mmray.config.base import StrictConfig
from mmray.config.creative import CreativeConfig, DiffusionConfig, FormatConfig
from mmray.config.data import CaptionConfig, DataConfig
from mmray.config.extras import CopyConfig, RecommendConfig, RerankConfig, SasrecConfig
from mmray.config.index import IndexConfig
from mmray.config.jobs import JobsConfig
from mmray.config.model import ModelConfig
from mmray.config.report import ReportConfig
from mmray.config.serve import DeploymentConfig, ServeConfig
from mmray.config.storage import StorageConfig
from mmray.config.train import TrainConfig

__all__ = [
    "CaptionConfig", "ConfigError", "CopyConfig", "DataConfig", "DeploymentConfig", "IndexConfig",
    "JobsConfig", "MmrayConfig", "ModelConfig", "RecommendConfig", "ReportConfig", "RerankConfig", "SasrecConfig", "ServeConfig",
    "StorageConfig",
    "TrainConfig", "load_config",
]
__all__ += ["CreativeConfig", "DiffusionConfig", "FormatConfig"]


with warnings.catch_warnings():
    # `copy` shadows pydantic's deprecated BaseModel.copy(); the section name wins.
    warnings.filterwarnings("ignore", message='Field name "copy"')

    class MmrayConfig(StrictConfig):
        """The root config; each component is handed only its own sub-config."""

        data: DataConfig = DataConfig()
        """Catalog ingestion and preprocessing."""
        model: ModelConfig = ModelConfig()
        """Dual encoder."""
        train: TrainConfig = TrainConfig()
        """Contrastive training."""
        index: IndexConfig = IndexConfig()
        """Vector + lexical index."""
        rerank: RerankConfig = RerankConfig()
        """Reranker."""
        recommend: RecommendConfig = RecommendConfig()
        """Recommender."""
        copy: CopyConfig = CopyConfig()
        """Copywriter."""
        serve: ServeConfig = ServeConfig()
        """Ray Serve application."""
        storage: StorageConfig = StorageConfig()
        """Artifact locations."""
        jobs: JobsConfig = JobsConfig()
        """How jobs share the Ray cluster: the CPUs a job may use, how long it waits for them."""
        creative: CreativeConfig = CreativeConfig()
        """Banners and ad creatives (CreativeStudio)."""
        report: ReportConfig = ReportConfig()
        """The evaluation report of jobs.evaluate (served at /report)."""


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the field."""


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> MmrayConfig:
    """Read `path` (YAML; None for the defaults), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides:
        _apply_override(raw, item)
    try:
        return MmrayConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source=str(path) if path else "config")) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.field=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    if not value.strip():
        node[parts[-1]] = None
    elif _is_text_field(parts):  # data.name=2024 is the text "2024", not the number YAML would read
        node[parts[-1]] = value.strip()
    else:
        node[parts[-1]] = yaml.safe_load(value)


def _is_text_field(parts: list[str]) -> bool:
    """Whether the field at `parts` holds plain text (str, or str | None)."""
    model: Any = MmrayConfig
    for part in parts:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return False
        model = field.annotation
    return model is str or (typing.get_origin(model) in (typing.Union, types.UnionType)
                            and set(typing.get_args(model)) == {str, type(None)})


def _describe(error: ValidationError, source: str) -> str:
    """One line per problem: `field: what is wrong (allowed: ...)`."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(err["loc"][:-1])
            msg = f"{loc}: unknown field (allowed: {', '.join(allowed)})"
        else:
            msg = f"{loc}: {err['msg']} (got {err.get('input')!r})"
        lines.append(msg)
    return f"invalid {source}: " + "; ".join(lines)


def _allowed_fields(loc: tuple) -> list[str]:
    model: Any = MmrayConfig
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, StrictConfig)):
            return []
        model = field.annotation
    return sorted(model.model_fields)
