"""The report as one static HTML page (no script; every value escaped): tables and the PNG plots,
linked relatively (`plots/<name>.png`) so the folder reads the same from disk and at /report/."""
from __future__ import annotations

from html import escape

TITLES = {"retrieval": "Retrieval: Recall@K on held-out items", "search": "Search quality: nDCG@10",
          "recommendation": "Recommendations vs baselines", "copy": "Product copy per engine",
          "latency": "Serving latency", "training": "Training curves", "exposure": "Exposure by category"}
STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5rem auto;padding:0 1rem;color:#1d232b}
h1{margin-bottom:.2rem}section{margin:1.8rem 0}table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #dde2e7;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #dde2e7}.note{color:#5b6570}.notrun{color:#8a5a00}"""


def _table(rows: dict[str, dict[str, float]], first: str) -> str:
    metrics = sorted({m for values in rows.values() for m in values})
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    body = "".join("<tr><td>" + escape(name) + "</td>" + "".join(
        f"<td>{values[m]:.3f}</td>" if isinstance(values.get(m), (int, float)) else "<td>\u2013</td>" for m in metrics)
        + "</tr>" for name, values in rows.items())
    return f"<table><tr><th>{escape(first)}</th>{head}</tr>{body}</table>"


def _img(rel: str, plots: set[str], alt: str, width: int, height: int) -> str:
    return (f'<p><img src="{escape(rel)}" alt="{escape(alt)}" width="{width}" height="{height}"></p>'
            if rel in plots else "")


def render_html(report: dict, plots: list[str], width: int, height: int) -> str:
    have = set(plots)
    parts = [f"<h1>mmray evaluation report</h1><p class=note>index {escape(report['index'])} \u00b7 model "
             f"{escape(report['model'])} \u00b7 dataset {escape(report['dataset'])} \u00b7 {escape(report['created_at'])}</p>"]
    for key, title in TITLES.items():
        s = report[key]
        body = [f'<section id="{key}"><h2>{escape(title)}</h2>']
        if "not_run" in s:
            body.append(f'<p class="notrun">{escape(s["not_run"])}</p></section>')
            parts.append("".join(body))
            continue
        if key == "retrieval":
            for d, label in (("t2i", "text \u2192 image"), ("i2t", "image \u2192 text")):
                if s.get(d):
                    body.append(f"<h3>{label}</h3>" + _table({n: {f"R@{k}": v for k, v in c.items()} for n, c in s[d].items()},
                                                            "model"))
                    body.append(_img(f"plots/recall_{d}.png", have, f"Recall@K {label}", width, height))
        elif key == "search":
            body.append(f"<p class=note>{escape(s['query_set'])}; query runtime {escape(str(s['query_runtime']))}</p>")
            body.append(_table(s["modes"], "search"))
            if s.get("reranked"):
                body.append(f'<p class="notrun">reranked: {escape(s["reranked"])}</p>')
            body.append(_img("plots/ndcg.png", have, "nDCG@10 and Recall@10 by search mode", width, height))
        elif key in ("recommendation", "copy"):
            body.append(f"<p class=note>from {escape(s['source'])}{(': ' + escape(s['notes'])) if s.get('notes') else ''}</p>")
            body.append(_table(s["metrics"], "method" if key == "recommendation" else "engine"))
            body.append(_img(f"plots/{key}.png", have, f"{key} metrics", width, height))
        elif key == "latency":
            kind = "histograms of raw latencies" if s["kind"] == "histogram" else "percentiles (this result file has no raw latencies)"
            body.append(f"<p class=note>{escape(s['source'])} ({escape(s['date'])}): {kind}</p>")
            if s["kind"] == "percentiles":
                body.append(_table(s["series"], "load"))
            else:
                stats = {n: {"n": float(len(v)), "median ms": sorted(v)[len(v) // 2]} for n, v in s["series"].items()}
                body.append(_table(stats, "load"))
            body.append(_img("plots/latency.png", have, "latency", width, height))
        elif key == "training":
            body.append(f"<p class=note>model {escape(s['model'])}, Ray Train run {escape(str(s['run_name']))}, "
                        f"{escape(str(s['workers']))} workers, {len(s['history'])} epochs</p>")
            body.append(_img("plots/training.png", have, "training curves", width, height))
        elif key == "exposure":
            body.append(f"<p class=note>top-{s['k']} of {s['queries']} held-out queries, one result per product; "
                        f"categories to depth {s['depth']}</p>")
            body.append(_table({g["category"]: {"exposure": g["exposure"], "catalog share": g["catalog_share"]}
                                for g in s["groups"]}, "category"))
            body.append(_img("plots/exposure.png", have, "exposure by category", width, height))
        body.append("</section>")
        parts.append("".join(body))
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>mmray evaluation report</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            "<p class=note>report.json holds every figure above.</p></body></html>")
