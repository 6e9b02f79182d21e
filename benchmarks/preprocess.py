"""Ray Data preprocessing vs a plain single-process loop, on catalog-sized images.

    python -m benchmarks.preprocess [--images 2000] [--size 1274x1580] [--cpus 2] [--set data.rows_per_shard=500]

Both sides do the same per-image work, `mmray.preprocess.process_image_ref` (read, sniff the
format, decode with JPEG draft, resize, re-encode, SHA-256), on the same files. The images are
the shipped 256 px Luma copies upscaled (LANCZOS) to the size catalogs really arrive in, with a
slight random crop / flip / brightness change so no two files are byte-identical; they are made
once and cached under bench_data/preprocess/ (with a catalog.jsonl in mmray's schema).

Timed, in one process, after one untimed warm-up of each side on a small subset (worker
start-up and imports are not billed; pass --no-warmup to bill them):
  loop      a Python for-loop calling process_image_ref on every image
  pipeline  mmray.preprocess.run_preprocess end to end: parse, validate, dedupe, images, groups,
            Parquet + report written. The headline ratio is pipeline vs loop.
  stage     the image stage alone: the parsed record chunks (parsed beforehand, untimed) through
            mmray.preprocess.image_stage (the pipeline's own blocks and concurrency; each block's
            task writes its Parquet shard), materialized.
Ray gets --cpus CPUs (default 2). Its workers run at nice 0 like the loop (Ray's default is 15,
which hands the cores to any other process on a shared machine and would bill that to Ray);
`--worker-niceness 15` restores Ray's default. The table also shows the CPU seconds our own
processes used and how many cores other work on the machine took meanwhile: when that is not
near 0 the wall-clock ratio is not trustworthy, run again.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CpuMeter, machine_facts, module_versions

ROOT = Path(__file__).resolve().parent.parent
SOURCE_CATALOG = ROOT / "data" / "luma" / "catalog.jsonl"
SOURCE_IMAGES = ROOT / "data" / "luma" / "images"
DEFAULT_CACHE = ROOT / "bench_data" / "preprocess"
WARMUP_IMAGES = 64


# --------------------------------------------------------------------------- the image set


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1274x1580, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError("size must be at least 32x32")
    return w, h


def _source_rows() -> dict[str, dict]:
    """Shipped image file name -> the Luma catalog row that uses it (for realistic text fields)."""
    by_image = {}
    with open(SOURCE_CATALOG, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for ref in row.get("images", []):
                by_image.setdefault(ref.rsplit("/", 1)[-1], row)
    return by_image


def _make_image(args: tuple[str, str, tuple[int, int], int]) -> None:
    from PIL import Image, ImageEnhance, ImageOps

    src, dst, (box_w, box_h), seed = args
    rng = random.Random(seed)
    with Image.open(src) as im:
        im = im.convert("RGB")
    w, h = im.size
    # up to 3% off each edge, so every copy differs even from the same source
    left, top = int(w * rng.uniform(0, 0.03)), int(h * rng.uniform(0, 0.03))
    right, bottom = w - int(w * rng.uniform(0, 0.03)), h - int(h * rng.uniform(0, 0.03))
    im = im.crop((left, top, right, bottom))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.95, 1.05))
    scale = min(box_w / im.width, box_h / im.height)  # keep the aspect, fit the box (long side = box)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    tmp = dst + ".tmp"
    im.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, dst)


def ensure_image_set(folder: Path, n: int, size: tuple[int, int], workers: int) -> Path:
    """Make (or reuse) `n` upscaled JPEGs and a catalog.jsonl listing them; returns the catalog path."""
    meta_path, catalog = folder / "meta.json", folder / "catalog.jsonl"
    meta = {"images": n, "size": list(size), "version": 1}
    if meta_path.exists() and catalog.exists() and json.loads(meta_path.read_text()) == meta \
            and all((folder / f"img_{i:05d}.jpg").exists() for i in range(1, n + 1)):
        return catalog
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = sorted(p for p in SOURCE_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no source images in {SOURCE_IMAGES}")
    rows_by_image = _source_rows()
    jobs, lines = [], []
    for i in range(1, n + 1):
        src = sources[(i - 1) % len(sources)]
        name = f"img_{i:05d}.jpg"
        jobs.append((str(src), str(folder / name), size, i))
        base = rows_by_image.get(src.name, {})
        lines.append(json.dumps({
            "id": f"bench-{i:05d}",
            "product_id": f"bench-p{(i - 1) // 3:05d}",  # a few variants per product, as in real catalogs
            "title": base.get("title") or f"Benchmark item {i}",
            "description": base.get("description", ""),
            "category": base.get("category", ""),
            "gender": base.get("gender", ""),
            "color": base.get("color", ""),
            "attributes": base.get("attributes", {}),
            "price": base.get("price", 10.0),
            "images": [name],
        }, ensure_ascii=False))
    print(f"generating {n} images at {size[0]}x{size[1]} into {folder} (once; cached) ...", flush=True)
    t0 = time.time()
    if workers > 1:
        from multiprocessing import Pool
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_image, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _make_image(job)
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta_path.write_text(json.dumps(meta))
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return catalog


def _subset_catalog(catalog: Path, n: int, dest: Path) -> Path:
    """The first `n` rows of `catalog`, with image paths made absolute (for warm-ups)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "catalog.jsonl"
    lines = catalog.read_text(encoding="utf-8").splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["images"] = [str(catalog.parent / ref) for ref in r["images"]]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- noise meter


# --------------------------------------------------------------------------- the three timings


def run_loop(paths: list[str], data_cfg) -> tuple[float, float]:
    """Single-process loop over process_image_ref; returns (wall s, CPU s of this process)."""
    from mmray.preprocess import process_image_ref

    out = []
    w0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        out.append(process_image_ref(p, data_cfg))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert len(out) == len(paths)
    return wall, cpu


def run_pipeline(cfg, workdir: Path) -> tuple[float, dict]:
    """mmray.preprocess.run_preprocess end to end; returns (wall s, its report)."""
    from mmray.preprocess import run_preprocess

    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"root": str(workdir)})})
    t0 = time.perf_counter()
    report = run_preprocess(cfg)
    return time.perf_counter() - t0, report


def run_stage(cfg, workdir: Path) -> tuple[float, int]:
    """The image stage alone (decode, resize, hash, shard write), configured as run_preprocess
    configures it, on records parsed beforehand (untimed); returns (wall s, ok rows)."""
    import pyarrow as pa
    import ray

    from mmray.catalog import catalog_folder, list_catalog_files
    from mmray.preprocess import image_stage, parse_catalog
    from mmray.storage import ArtifactStore

    data = cfg.data
    chunks, _ = parse_catalog(list_catalog_files(data.catalog), data)
    ray.wait(chunks, num_returns=len(chunks))
    image_root = data.image_root or catalog_folder(data.catalog)
    t0 = time.perf_counter()
    ds = image_stage(chunks, data, image_root, {}, ArtifactStore(str(workdir)), str(workdir / "items")).materialize()
    wall = time.perf_counter() - t0
    status = pa.concat_tables(ray.get(ds.select_columns(["status"]).to_arrow_refs()))["status"]
    shutil.rmtree(workdir, ignore_errors=True)
    return wall, status.to_pylist().count("ok")


# --------------------------------------------------------------------------- report


def _machine() -> dict[str, str]:
    return {**machine_facts(), **module_versions("ray", "PIL", "pyarrow", "torch")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--size", type=_parse_size, default=(1274, 1580), help="image box WxH (default 1274x1580)")
    parser.add_argument("--cpus", type=int, default=2, help="num_cpus for the local Ray (default 2)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"), help="base config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. data.rows_per_shard=500 (data.catalog is set by the benchmark)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="image set folder (default bench_data/preprocess)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side; the best is reported")
    parser.add_argument("--no-stage", action="store_true", help="skip the image-stage-only timing")
    parser.add_argument("--no-warmup", action="store_true", help="bill worker start-up and imports too")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice level of the local Ray workers (default 0, the loop's own; Ray's default is 15,"
                             " which makes them yield the cores to anything else running, the loop's rivals included)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")

    from mmray.config import load_config
    from mmray.runtime import init_ray, joins_cluster

    load0 = os.getloadavg()
    catalog = ensure_image_set(Path(args.cache), args.images, args.size, workers=max(1, os.cpu_count() or 1))
    cfg = load_config(args.config, [*args.set, f"data.catalog={catalog}", "data.name=bench"])
    paths = [str(catalog.parent / json.loads(line)["images"][0])
             for line in catalog.read_text(encoding="utf-8").splitlines() if line.strip()]
    mb = sum(os.path.getsize(p) for p in paths) / 1e6

    if not joins_cluster():  # a local Ray starts here: its workers compete on the loop's terms
        os.environ.setdefault("RAY_worker_niceness", str(args.worker_niceness))
    init_ray(num_cpus=args.cpus)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per execution otherwise
    tmp = Path(tempfile.mkdtemp(prefix="mmray-bench-"))
    try:
        if not args.no_warmup:  # untimed: Ray worker processes, imports, page cache
            small = _subset_catalog(catalog, min(WARMUP_IMAGES, len(paths)), tmp / "warm")
            run_loop(paths[:WARMUP_IMAGES], cfg.data)
            # small shards, so that every Ray worker runs (and imports) at least once
            run_pipeline(cfg.model_copy(update={"data": cfg.data.model_copy(
                # its absolute image paths lie in the big catalog's folder: make that the image root
                update={"catalog": str(small), "image_root": str(catalog.parent),
                        "rows_per_shard": max(1, WARMUP_IMAGES // (2 * args.cpus))})}),
                tmp / "warm-out")
        loops, pipes, stages, report = [], [], [], None
        meter = CpuMeter()
        for r in range(args.repeats):
            meter.start()
            loops.append((*run_loop(paths, cfg.data), meter.stop()))
            meter.start()
            wall, report = run_pipeline(cfg, tmp / f"out{r}")
            pipes.append((wall, meter.stop(), report))
            if not args.no_stage:
                meter.start()
                wall, ok = run_stage(cfg, tmp / f"stage{r}")
                stages.append((wall, meter.stop()))
                if ok != report["rows_out"]:
                    raise RuntimeError(f"image stage kept {ok} rows, the pipeline {report['rows_out']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(paths)
    loop_wall, loop_cpu, loop_noise = min(loops, key=lambda x: x[0])
    pipe_wall, pipe_noise, report = min(pipes, key=lambda x: x[0])  # the best run's own timings
    res = {
        "images": n, "size": f"{args.size[0]}x{args.size[1]}", "megabytes": round(mb, 1),
        "loop_s": round(loop_wall, 2), "loop_cpu_s": round(loop_cpu, 2), "loop_ips": round(n / loop_wall, 1),
        "pipeline_s": round(pipe_wall, 2), "pipeline_ips": round(n / pipe_wall, 1),
        "ratio_pipeline": round(loop_wall / pipe_wall, 2),
        # each repeat times the loop and then the pipeline back to back: the median of those
        # paired ratios is less sensitive to the machine's speed drifting between repeats
        "ratio_pipeline_paired_median": round(statistics.median(
            lw / pw for (lw, _, _), (pw, _, _) in zip(loops, pipes)), 2),
        "pipeline_report_timings_s": report["timings_s"], "rows_out": report["rows_out"],
        "rows_quarantined": report["rows_quarantined"],
        "cpu_cores_used": {"loop": loop_noise, "pipeline": pipe_noise},
        "all_loop_s": [round(w, 2) for w, _, _ in loops], "all_pipeline_s": [round(w, 2) for w, _, _ in pipes],
        "rows_per_shard": cfg.data.rows_per_shard, "concurrency": cfg.data.concurrency, "ray_cpus": args.cpus,
        "warmup_excluded": not args.no_warmup, "repeats": args.repeats,
        "loadavg_before": [round(v, 2) for v in load0], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": _machine(), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if stages:
        stage_wall, stage_noise = min(stages, key=lambda x: x[0])
        res.update(stage_s=round(stage_wall, 2), stage_ips=round(n / stage_wall, 1),
                   ratio_stage=round(loop_wall / stage_wall, 2), all_stage_s=[round(w, 2) for w, _ in stages])
        res["cpu_cores_used"]["stage"] = stage_noise

    m = res["machine"]
    rows = [
        ("images", f"{n} JPEG, {res['size']} box, {mb:.0f} MB (q90, upscaled Luma)"),
        ("output", f"{cfg.data.image_size} px {cfg.data.image_format} q{cfg.data.image_quality}"),
        ("loop (1 process)", f"{res['loop_ips']:8.1f} images/s  ({loop_wall:.2f} s wall, {loop_cpu:.2f} s CPU)"),
        ("Ray Data pipeline", (f"{res['pipeline_ips']:8.1f} images/s  ({pipe_wall:.2f} s, run_preprocess end to end;"
                              f" its own timings {report['timings_s']})")),
    ]
    if stages:
        rows.append(("Ray Data image stage", (f"{res['stage_ips']:8.1f} images/s  ({res['stage_s']:.2f} s,"
                                             " image_stage only: decode, resize, hash, shard write)")))
    rows += [
        ("ratio (headline)", f"{res['ratio_pipeline']:.2f}x  full pipeline vs loop (best run of each)"),
        ("ratio, paired median", (f"{res['ratio_pipeline_paired_median']:.2f}x  median over the {args.repeats}"
                                  " repeats of loop s / pipeline s")),
    ]
    if stages:
        rows.append(("ratio (image stage)", f"{res['ratio_stage']:.2f}x  image stage vs loop"))
    noise = res["cpu_cores_used"]
    rows.append(("CPU s used (ours)", "  ".join(f"{k} {v['own_cpu_s']:.1f}" for k, v in noise.items())))
    rows.append(("busy cores, avg", "  ".join(f"{k} {v['own_cores']:.2f} ours + {v['other_cores']:.2f} other"
                                              for k, v in noise.items())))
    rows += [
        ("settings", (f"ray num_cpus={args.cpus}, worker nice {os.environ.get('RAY_worker_niceness', '15')}"
                      f" (loop nice {os.nice(0)}), data.rows_per_shard={cfg.data.rows_per_shard},"
                     f" data.concurrency={cfg.data.concurrency}, best of {args.repeats},"
                     f" warm-up {'excluded' if not args.no_warmup else 'billed'}")),
        ("rows out / quarantined", f"{report['rows_out']} / {report['rows_quarantined']}"),
        ("machine", (f"nproc {m['nproc']} (affinity {m['affinity']}), {m['cpu']},"
                    f" load avg {res['loadavg_before'][0]} -> {res['loadavg_after'][0]}")),
        ("versions", (f"python {m['python']}, ray {m['ray']}, pillow {m['PIL']}, pyarrow {m['pyarrow']},"
                     f" torch {m['torch']}")),
        ("date", res["date"]),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("preprocess benchmark: Ray Data vs a single-process loop")
    print("-" * 78)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * 78)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
