"""PNG plots of the report's sections (matplotlib, Agg backend: no display needed), every one the size
the config asks for (`report.plot_width_px` x `report.plot_height_px`). A section that did not run gets
no plot. `draw_plots(report, cfg)` -> {"plots/<name>.png": bytes}."""
from __future__ import annotations

import io

import numpy as np

from mmray.config import ReportConfig

DPI = 100


def _figure(cfg: ReportConfig, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(cfg.plot_width_px / DPI, cfg.plot_height_px / DPI), dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches="tight": the size stays what the config says
    plt.close(fig)
    return buf.getvalue()


def recall_plot(curves: dict[str, dict[str, float]], direction: str, cfg: ReportConfig) -> bytes:
    """Recall@K (x: K) per model / baseline; `curves`: name -> {"1": r, "5": r, "10": r}."""
    fig, (ax,) = _figure(cfg)
    for name, points in curves.items():
        ks = sorted(points, key=int)
        ax.plot([int(k) for k in ks], [points[k] for k in ks], marker="o", label=name)
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), title=f"{direction} retrieval, held-out items")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    return _png(fig)


def bars_plot(rows: dict[str, dict[str, float]], title: str, cfg: ReportConfig, ylabel: str = "") -> bytes:
    """Grouped bars: one group per metric, one bar per row (method / engine / search mode)."""
    fig, (ax,) = _figure(cfg)
    metrics = sorted({m for values in rows.values() for m in values})
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(metrics))
    for i, (name, values) in enumerate(rows.items()):
        ax.bar(x + i * width, [values.get(m, np.nan) for m in metrics], width, label=name)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, metrics)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=.3)
    ax.legend(fontsize=8)
    return _png(fig)


def latency_plot(latency: dict, cfg: ReportConfig) -> bytes:
    """Histograms of raw latencies per series, or p50/p95/p99 bars when only percentiles were recorded."""
    fig, (ax,) = _figure(cfg)
    if latency["kind"] == "histogram":
        for name, values in latency["series"].items():
            ax.hist(values, bins=40, alpha=.55, label=f"{name} (n={len(values)})")
        ax.set(xlabel="latency (ms)", ylabel="requests")
    else:
        rows = latency["series"]
        width = 0.8 / max(1, len(rows))
        x = np.arange(3)
        for i, (name, p) in enumerate(rows.items()):
            ax.bar(x + i * width, [p["p50_ms"], p["p95_ms"], p["p99_ms"]], width, label=name)
        ax.set_xticks(x + width * (len(rows) - 1) / 2, ["p50", "p95", "p99"])
        ax.set(ylabel="latency (ms)")
    ax.set_title(f"/v1/search latency ({latency['source']})", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    return _png(fig)


def training_plot(history: list[dict], cfg: ReportConfig) -> bytes:
    """Loss, and held-out retrieval metrics, per epoch (what Ray Train reported each epoch)."""
    fig, (left, right) = _figure(cfg, 2)
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h.get("loss", np.nan) for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="contrastive loss", title="training loss")
    for key in ("query_R@10", "query_nDCG@10", "t2i_R@1", "i2t_R@1"):
        if any(key in h for h in history):
            right.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="held-out metric", ylim=(0, 1.02), title="held-out retrieval")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=.3)
    return _png(fig)


def exposure_plot(exposure: dict, cfg: ReportConfig) -> bytes:
    """Share of top-k slots per category beside the category's share of the catalog's products."""
    fig, (ax,) = _figure(cfg)
    groups = exposure["groups"]
    names = [g["category"] for g in groups]
    y = np.arange(len(names))
    ax.barh(y - 0.2, [g["exposure"] for g in groups], 0.4, label=f"share of top-{exposure['k']} slots")
    ax.barh(y + 0.2, [g["catalog_share"] for g in groups], 0.4, label="share of catalog products")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="share", title=f"exposure by category, {exposure['queries']} held-out queries")
    ax.grid(axis="x", alpha=.3)
    ax.legend(fontsize=8)
    return _png(fig)


def draw_plots(report: dict, cfg: ReportConfig) -> dict[str, bytes]:
    """Every plot the report's sections allow, by file name."""
    out: dict[str, bytes] = {}
    retrieval = report["retrieval"]
    for direction in ("t2i", "i2t"):
        if retrieval.get(direction):
            label = "text \u2192 image" if direction == "t2i" else "image \u2192 text"
            out[f"plots/recall_{direction}.png"] = recall_plot(retrieval[direction], label, cfg)
    ndcg = report["search"]
    if ndcg.get("modes"):
        rows = {mode: {"nDCG@10": m["nDCG@10"], "Recall@10": m["R@10"]} for mode, m in ndcg["modes"].items()}
        out["plots/ndcg.png"] = bars_plot(rows, f"search quality, {ndcg['query_set']}", cfg)
    for name in ("recommendation", "copy"):
        if report[name].get("metrics"):
            out[f"plots/{name}.png"] = bars_plot(report[name]["metrics"], f"{name} metrics ({report[name]['source']})", cfg)
    if report["latency"].get("series"):
        out["plots/latency.png"] = latency_plot(report["latency"], cfg)
    if report["training"].get("history"):
        out["plots/training.png"] = training_plot(report["training"]["history"], cfg)
    if report["exposure"].get("groups"):
        out["plots/exposure.png"] = exposure_plot(report["exposure"], cfg)
    return out
