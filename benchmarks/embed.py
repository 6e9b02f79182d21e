"""Embedding throughput: torch against ONNX Runtime fp32 / int8, and the Embedder through Ray Data
and through a Serve replica against a bare in-process forward, with the held-out quality cost.

    python -m benchmarks.embed [--config configs/local.yaml] [--set KEY=VALUE ...] [--images 256]
                               [--batch 32] [--threads 2] [--skip-ray] [--quick]

Needs a trained model (the config's storage root; `--set storage.root=...` for another) and its
preprocessed dataset (catalog photos and the held-out split).

What runs, all in this one process and one run:
  1. runtimes   the model's Embedder on `torch`, `onnx` and `onnx-int8` (int8 calibrated on 64
                catalog photos, as `jobs.build_index` does), `--threads` threads each: images/s
                over --images catalog photos and texts/s over their product texts, in batches of
                --batch, after one warm-up batch. Ratio: each against torch.
                Quality: the held-out query R@10 / nDCG@10 (`mmray.training.evaluate`, the
                per-epoch report's metrics) with every tower feature computed on that runtime,
                and the relative nDCG@10 change against torch.
  2. Ray Data   the same photos through `map_batches` into one Embedder actor of `--threads` CPUs
                and, with more than one thread, into `--threads` actors of 1 CPU each (the index
                build's shape: `index.embed_concurrency` 1-CPU actors), `index.embed_runtime`, batch --batch. Throughput is
                measured from the first batch's start to the last batch's end as the actor saw
                them (actor start-up excluded, the pipeline's gaps between batches included).
  3. Serve      one replica holding the Embedder, `--threads` CPUs, called through its handle
                with one batch after another (after a warm-up batch).
  Baseline for 2 and 3: the bare in-process forward of the same Embedder (same runtime, batch and
  threads), measured in this run just before. Targets (issue 12): runtimes >= 2x torch with
  <= 1 % relative nDCG@10 loss; Ray Data and Serve >= 0.95x the bare forward.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import machine_lines

RUNTIMES = ("torch", "onnx", "onnx-int8")
CALIBRATION = 64


def load(cfg):
    from mmray.dataset import current_dataset, load_items
    from mmray.storage import ArtifactStore, model_kind

    store = ArtifactStore.from_config(cfg.storage)
    model = store.resolve(model_kind(), hint="run `python -m jobs.train` first")
    dataset = current_dataset(cfg)
    train_items, test_items = load_items(dataset, split="train"), load_items(dataset, split="test")
    return model, train_items, test_items


def timed(fn, inputs: list, batch: int) -> float:
    """Items per second of fn over `inputs` in batches, after one warm-up batch."""
    fn(inputs[:batch])
    t0 = time.perf_counter()
    for i in range(0, len(inputs), batch):
        fn(inputs[i:i + batch])
    return len(inputs) / (time.perf_counter() - t0)


def runtimes_section(model_version, photos, texts, test_items, cfg, args) -> list[dict]:
    import torch

    from mmray.embedder import Embedder
    from mmray.training.evaluate import build_eval_inputs, evaluate

    torch.set_num_threads(args.threads)
    reference = Embedder.from_version(model_version, args.batch)
    m = reference.model.cfg
    print(f"  the model's towers: kind {m.kind}, image {m.image_tower} at {reference.model.image_size} px, text {m.text_tower}")
    calibration = reference.pixels(photos[:CALIBRATION]).numpy()
    rows = []
    for runtime in RUNTIMES:
        # `store=None`: export here and now (the cached artifact is what the index build uses)
        emb = Embedder(reference.model, args.batch, runtime=runtime, calibration=calibration)
        row = {"runtime": runtime, "towers": f"image {emb.image_runtime}, text {emb.text_runtime}",
               "img_s": timed(emb.embed_images, photos, args.batch),
               "txt_s": timed(lambda t, e=emb: e.embed_texts(t, 128), texts, args.batch)}
        if not args.quick:
            ev = build_eval_inputs(test_items, emb, cfg.index.image_weight, caption=cfg.data.caption)
            metrics = evaluate(emb.model, ev)
            row |= {"R@10": metrics.get("query_R@10", float("nan")), "nDCG@10": metrics.get("query_nDCG@10", float("nan"))}
        rows.append(row)
        print(f"  {runtime:<10} {row['towers']:<34} {row['img_s']:7.1f} img/s {row['txt_s']:7.1f} texts/s", flush=True)
    return rows


class _Timed:
    """Ray Data actor: the Embedder of one model; each batch comes back with when it ran."""

    def __init__(self, model_version, batch: int, runtime: str, threads: int):
        import torch

        from mmray.embedder import Embedder

        torch.set_num_threads(threads)
        self.embedder = Embedder.from_version(model_version, batch, runtime)

    def __call__(self, batch: dict) -> dict:
        t0 = time.time()
        vectors = self.embedder.embed_images([bytes(b) for b in batch["image"]])
        n = len(vectors)
        return {"vector": list(vectors), "t0": np.full(n, t0), "t1": np.full(n, time.time())}


def ray_sections(model_version, photos, cfg, args) -> dict:
    """Per round: the bare forward, Ray Data, the Serve replica (interleaved, so a slow spell of
    this shared VM hits all alike); the medians over rounds are returned."""
    import ray
    import torch
    from ray import serve

    from mmray.embedder import Embedder

    runtime = cfg.index.embed_runtime
    torch.set_num_threads(args.threads)
    bare_emb = Embedder.from_version(model_version, args.batch, runtime)  # publishes compiled/... for the actors
    runs: dict[str, list[float]] = {}
    # Logical CPUs for the Serve replica and the Ray Data actors at once (they take turns on the
    # real cores: one of them is idle while the other is measured), plus one for the rest.
    ray.init(num_cpus=2 * args.threads + 1, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="mmray-bench-"), configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"image": p} for p in photos]).repartition(max(1, len(photos) // args.batch)).materialize()
        shapes = [("ray_data", 1, args.threads)]  # one actor with every thread, like the bare forward
        if args.threads > 1:  # the index build's shape: embed_concurrency actors of 1 CPU each
            shapes.append(("ray_data_pool", args.threads, 1))

        # One batch after another, like the bare loop. (Two in flight with a lock in the replica
        # measured slower at 2 threads, x0.56; without the lock Serve runs both at once on more
        # CPUs than the baseline has.)
        @serve.deployment(ray_actor_options={"num_cpus": args.threads}, max_ongoing_requests=1)
        class EmbedReplica:
            def __init__(self, version, batch, rt, threads):
                torch.set_num_threads(threads)
                self.embedder = Embedder.from_version(version, batch, rt)

            def embed(self, images: list[bytes]) -> np.ndarray:
                return self.embedder.embed_images(images)

        serve.start(proxy_location="Disabled")  # handle calls only: no HTTP proxy actor taking CPU
        handle = serve.run(EmbedReplica.bind(model_version, args.batch, runtime, args.threads),
                           name="embed-bench", route_prefix=None).options(method_name="embed")
        handle.remote(photos[:args.batch]).result()

        def via_serve(images: list[bytes]) -> None:
            for i in range(0, len(images), args.batch):
                handle.remote(images[i:i + args.batch]).result()

        for r in range(args.rounds):
            runs.setdefault("bare", []).append(timed(bare_emb.embed_images, photos, args.batch))
            for key, actors, threads in shapes:
                rows = ds.map_batches(_Timed, batch_size=args.batch, batch_format="numpy",
                                      fn_constructor_args=(model_version, args.batch, runtime, threads),
                                      compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads).take_all()
                runs.setdefault(key, []).append(len(rows) / (max(x["t1"] for x in rows) - min(x["t0"] for x in rows)))
            t0 = time.perf_counter()
            via_serve(photos)
            runs.setdefault("serve", []).append(len(photos) / (time.perf_counter() - t0))
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + " img/s", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    return {"runtime": runtime, "towers": f"image {bare_emb.image_runtime}"} | {k: float(np.median(v)) for k, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--images", type=int, default=256, help="catalog photos embedded per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (and CPUs of the Ray actors)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the Ray Data / Serve comparison")
    parser.add_argument("--skip-ray", action="store_true", help="runtimes only")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 64 photos, no quality pass")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = min(args.images, 64), 1
    os.environ.setdefault("RAY_AUTH_MODE", "token")

    from mmray.config import load_config

    cfg = load_config(args.config, args.set)
    model_version, train_items, test_items = load(cfg)
    photos = [bytes(im) for it in train_items + test_items for im in it["images"]][:args.images]
    texts = [it["text"] for it in train_items + test_items][:args.images]
    print("\n".join(machine_lines()))
    print(f"model       {model_version.ref}; {len(photos)} photos, {len(texts)} product texts, batch {args.batch}, "
          f"{args.threads} threads\n")

    print("runtimes (in-process Embedder):")
    rows = runtimes_section(model_version, photos, texts, test_items, cfg, args)
    base = rows[0]
    print(f"\n{'runtime':<10} {'towers':<34} {'img/s':>7} {'x torch':>7} {'texts/s':>8} {'x torch':>7} "
          f"{'R@10':>6} {'nDCG@10':>7} {'nDCG vs torch':>13}")
    for r in rows:
        quality = ""
        if "nDCG@10" in r:
            change = (r["nDCG@10"] - base["nDCG@10"]) / base["nDCG@10"] * 100
            quality = f"{r['R@10']:>6.3f} {r['nDCG@10']:>7.3f} {change:>+12.2f}%"
        print(f"{r['runtime']:<10} {r['towers']:<34} {r['img_s']:>7.1f} {r['img_s'] / base['img_s']:>6.2f}x "
              f"{r['txt_s']:>8.1f} {r['txt_s'] / base['txt_s']:>6.2f}x {quality}")
    if not args.skip_ray:
        print(f"\nRay Data and Serve (index.embed_runtime {cfg.index.embed_runtime}), image embedding:")
        r = ray_sections(model_version, photos, cfg, args)
        print(f"\nmedian of {args.rounds} rounds    img/s  x bare")
        print(f"{'bare in-process forward':<28} {r['bare']:>7.1f} {1.0:>6.2f}x")
        print(f"{'Ray Data, 1 actor':<28} {r['ray_data']:>7.1f} {r['ray_data'] / r['bare']:>6.2f}x  (target >= 0.95x)")
        if "ray_data_pool" in r:
            print(f"{f'Ray Data, {args.threads} actors x 1 CPU':<28} {r['ray_data_pool']:>7.1f} "
                  f"{r['ray_data_pool'] / r['bare']:>6.2f}x  (target >= 0.95x)")
        print(f"{'Serve replica (handle)':<28} {r['serve']:>7.1f} {r['serve'] / r['bare']:>6.2f}x  (target >= 0.95x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
