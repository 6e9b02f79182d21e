"""Settings of the evaluation report (`jobs.evaluate`): where it finds results of other runs, and its plots."""
from __future__ import annotations

from pydantic import Field

from mmray.config.base import StrictConfig


class ReportConfig(StrictConfig):
    """The evaluation report: JSON + HTML + PNG plots, published as `reports/evaluation/<version>`."""

    benchmarks_dir: str = "benchmarks/results"
    """Folder of benchmark results: the newest `serve-*.json` (raw latencies, `benchmarks/serve.py --json`)
    or else `serve-*.txt` (percentiles) gives the latency section."""
    recommend_results: str = "benchmarks/results/recommend.json"
    """Recommendation metrics vs baselines, `{"metrics": {"<method>": {"HR@10": ..., "NDCG@10": ...}}}`;
    the section says "not run" when the file is absent."""
    copy_results: str = "benchmarks/results/copy.json"
    """Copy metrics per engine, same shape as `recommend_results`; "not run" when absent."""
    exposure_k: int = Field(10, ge=1)
    """Top-k slots counted for exposure by category across the held-out queries."""
    category_depth: int = Field(2, ge=1)
    """Category path segments that name an exposure group (2: `Women/Tops`)."""
    plot_width_px: int = Field(900, ge=200)
    """Width of every plot PNG, in pixels."""
    plot_height_px: int = Field(520, ge=150)
    """Height of every plot PNG, in pixels."""
