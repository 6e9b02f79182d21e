"""The towers on ONNX Runtime (`index.embed_runtime`, `index.query_runtime`): `onnx` (fp32) or
`onnx-int8`; torch stays the training path and the fallback.

Why: on these CPUs ONNX Runtime runs EfficientNet-Lite about 3-4x faster than torch, and a
one-query MiniLM forward about 3x faster, in C++ with the GIL released (a transformers forward
is mostly Python and holds the GIL a Serve replica's HTTP loop needs). BENCHMARKS.md, "Embedding".

Each tower's features (the part before the projection heads) are exported with
`torch.onnx.export` and checked against torch on probe inputs before they are used:
  * fp32: max |diff| of the features <= FP32_TOLERANCE (measured ~1e-5);
  * int8: the cosine of every probe's features to torch's >= INT8_MIN_COSINE (a gate against a
    broken quantisation; what int8 costs in retrieval quality is measured by
    `benchmarks/embed.py` on held-out queries). The text tower is
    quantised dynamically (int8 weights, activations quantised per batch at run time: the usual
    choice for transformer MatMuls); the image tower statically (QDQ, per-channel weights,
    activation ranges calibrated on images), because ONNX Runtime's dynamic convolution is
    slower than fp32 here. Calibration uses catalog photos when the caller gives them (the index
    build does) and synthetic probe images otherwise.
An int8 tower that fails its check is used in fp32; a tower whose fp32 export fails or disagrees
stays on torch. Each is logged, and the report says why.

Exports are cached as a versioned artifact next to the model, `compiled/<model kind>/<model
version>/<runtime>` in the artifact store (files `image.onnx`, `text.onnx`, a manifest with the
check's figures): the first process that needs them exports and publishes, the others (Ray Data
actors, Serve replicas) load them. A store this process cannot write to only costs the export.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.9
OPSET = 17
# Texts of different lengths, so the check covers padding and the dynamic sequence axis.
TEXT_PROBES = ["black hoodie for women", "waterproof", "a lightweight jacket with a hood and two zip pockets, for running"]
FILES = {"image": "image.onnx", "text": "text.onnx"}


class _TextFeatures(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.text_features(input_ids, attention_mask)


class _ImageFeatures(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixels)


class OrtTower:
    """One tower's features through an ONNX Runtime session: torch tensors in and out."""

    def __init__(self, session, names: tuple[str, ...]):
        self.session, self.names = session, names
        self.wanted = {i.name for i in session.get_inputs()}  # an input the graph never reads is dropped

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.names, args)) | kwargs
        out = self.session.run(None, {k: v.numpy() for k, v in feeds.items() if k in self.wanted})[0]
        return torch.from_numpy(out)


@dataclass
class Compiled:
    """ONNX Runtime towers of one model (either may be None: that tower stays on torch)."""

    runtime: str
    image: OrtTower | None = None
    text: OrtTower | None = None
    source: str = ""  # the artifact it came from, or "exported" (not published)
    runtimes: dict | None = None  # per tower: the runtime it got (`onnx` for an int8 export refused)


def compiled_kind(model_ref: str, runtime: str) -> str:
    """`models/dual_encoder/v2026...` + `onnx-int8` -> `compiled/dual_encoder/v2026.../onnx-int8`."""
    _, name, version = model_ref.split("/")
    return f"compiled/{name}/{version}/{runtime}"


# --------------------------------------------------------------------------- probes


def text_probes(model) -> list[dict[str, torch.Tensor]]:
    """A padded batch and a single query."""
    return [model.tokenize(TEXT_PROBES), model.tokenize(TEXT_PROBES[:1])]


def synthetic_images(size: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) normalised-looking inputs: smooth colour fields with edges and noise,
    in [-1, 1] like a mean = std = 0.5 transform gives (a stand-in when no photos are at hand)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = [np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.uniform()))
                for _ in range(3)]
        img = np.stack(base) * rng.uniform(0.3, 0.9)
        img[:, rng.integers(size // 4, size // 2):, rng.integers(size // 4, size // 2):] = rng.uniform(-1, 1, (3, 1, 1))
        out.append(np.clip(img + rng.normal(0, 0.05, img.shape), -1, 1))
    return np.stack(out).astype(np.float32)


def _has_torch_graph(tower) -> bool:
    return any(True for _ in tower.parameters())


# --------------------------------------------------------------------------- export


def export(model, runtime: str, calibration: np.ndarray | None = None) -> tuple[dict[str, bytes], dict]:
    """Export and check both towers of `model` for `runtime` (`onnx` or `onnx-int8`).

    Returns ({file name: ONNX bytes} for the towers that passed, a report per tower: its check
    figures, or why it stays on torch). `calibration`: (N, 3, S, S) preprocessed catalog images
    for the int8 image tower (synthetic ones otherwise)."""
    import onnxruntime  # noqa: F401 - fail here, before exporting, when it is missing

    files, report = {}, {}
    size = getattr(model, "image_size", None) or getattr(model, "input_size", None) or 224
    if calibration is None:
        calibration, held_out = synthetic_images(size), synthetic_images(size, 4, seed=1)
    elif len(calibration) >= 16:  # check on photos the calibration did not see
        calibration, held_out = calibration[:-8], calibration[-8:]
    else:
        held_out = calibration[:8]
    for name in ("image", "text"):
        tower = getattr(model, f"{name}_tower", model)  # open_clip keeps both in one module
        if not _has_torch_graph(tower):
            report[name] = {"runtime": "torch", "why": f"the {type(tower).__name__} tower is not a torch graph"}
            continue
        if name == "image":
            module, inputs = _ImageFeatures(model), ("pixels",)
            pixels = torch.from_numpy(np.ascontiguousarray(held_out, dtype=np.float32))
            probes = [(pixels,), (pixels[:1],)]  # a batch, and one photo alone
        else:
            module, inputs = _TextFeatures(model), ("input_ids", "attention_mask")
            probes = [(p["input_ids"], p["attention_mask"]) for p in text_probes(model)]
        try:
            fp32 = _export_one(module.eval(), inputs, probes[0])
            figures = _check(fp32, module, inputs, probes, "onnx")
            data, used = fp32, "onnx"
            if runtime == "onnx-int8" and "why" not in figures:
                int8 = _quantize(fp32, name, inputs, calibration)
                int8_figures = _check(int8, module, inputs, probes, runtime)
                if "why" in int8_figures:  # keep the checked fp32 export rather than torch
                    figures |= {"int8_refused": int8_figures["why"]}
                else:
                    data, used, figures = int8, runtime, int8_figures
        except Exception as e:  # noqa: BLE001 - any failure means: this tower stays on torch
            report[name] = {"runtime": "torch", "why": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        if "why" in figures:
            report[name] = {"runtime": "torch", **figures}
            continue
        files[FILES[name]] = data
        report[name] = {"runtime": used, **figures}
    return files, report


def _export_one(module: torch.nn.Module, inputs: tuple[str, ...], example: tuple[torch.Tensor, ...]) -> bytes:
    axes = {n: ({0: "batch", 1: "tokens"} if n != "pixels" else {0: "batch"}) for n in inputs} | {"features": {0: "batch"}}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python; the check decides
        torch.onnx.export(module, example, buf, input_names=list(inputs), output_names=["features"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def _quantize(data: bytes, tower: str, inputs: tuple[str, ...], calibration: np.ndarray) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="mmray-quant-") as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(data)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        if tower == "text":
            quantize_dynamic(pre, out, weight_type=QuantType.QInt8, per_channel=True)
        else:
            batches = [{inputs[0]: calibration[i:i + 8].astype(np.float32)} for i in range(0, len(calibration), 8)]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    return next(self.it, None)

            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        with open(out, "rb") as f:
            return f.read()


def _check(data: bytes, module, inputs, probes, runtime: str) -> dict:
    """Compare the ONNX tower with torch on the probes; {'why': ...} when they disagree."""
    tower = OrtTower(session(data), inputs)
    worst_diff, worst_cos = 0.0, 1.0
    for probe in probes:
        with torch.no_grad():
            expected = module(*probe).float()
        got = tower(*probe)
        worst_diff = max(worst_diff, float((got - expected).abs().max()))
        worst_cos = min(worst_cos, float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min()))
    figures = {"max_abs_diff": worst_diff, "min_cosine": worst_cos}
    if runtime == "onnx" and not (np.isfinite(worst_diff) and worst_diff <= FP32_TOLERANCE):
        return figures | {"why": f"max |diff| vs torch {worst_diff:.2g} > {FP32_TOLERANCE}"}
    if runtime == "onnx-int8" and not (np.isfinite(worst_cos) and worst_cos >= INT8_MIN_COSINE):
        return figures | {"why": f"min cosine vs torch {worst_cos:.4f} < {INT8_MIN_COSINE}"}
    return figures


def session(data: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with as many threads as torch has here (1 in a 1-CPU Ray actor)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: on a few cores a spinning pool takes CPU from
    # the HTTP event loop and Ray's own processes (measured: BENCHMARKS.md, "Embedding").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- the cache


def compile_towers(model, runtime: str, store=None, model_ref: str | None = None,
                   calibration: np.ndarray | None = None) -> Compiled:
    """The ONNX Runtime towers of `model` for `runtime`: loaded from the artifact store when
    `compiled/.../<runtime>` is published for `model_ref`, else exported, checked and published
    (best effort). `runtime="torch"`, or any failure, gives a Compiled with no towers."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return Compiled("torch")
    files, report, source = None, {}, "exported"
    kind = compiled_kind(model_ref, runtime) if store is not None and model_ref else None
    if kind is not None:
        files, report, source = _load_published(store, kind)
    try:
        if files is None:
            files, report = export(model, runtime, calibration)
            for name, r in report.items():
                if r["runtime"] == "torch":
                    log.warning("%s: the %s tower stays on torch (%s)", runtime, name, r["why"])
                else:
                    if "int8_refused" in r:
                        log.warning("%s: the %s tower runs in fp32 instead (int8 %s)", runtime, name, r["int8_refused"])
                    log.info("%s: %s tower on ONNX Runtime (max |diff| %.1e, min cosine %.5f vs torch)",
                             runtime, name, r["max_abs_diff"], r["min_cosine"])
            if kind is not None and files:
                source = _publish(store, kind, files, report, model_ref, calibration is not None)
        names = {"image": ("pixels",), "text": ("input_ids", "attention_mask")}
        towers = {n: OrtTower(session(files[f]), names[n]) for n, f in FILES.items() if f in files}
        runtimes = {n: (report.get(n) or {}).get("runtime", runtime) if n in towers else "torch" for n in FILES}
    except Exception as e:  # noqa: BLE001 - onnxruntime missing or broken: torch it is
        log.warning("%s unavailable (%s: %s); using torch", runtime, type(e).__name__, str(e)[:200])
        return Compiled("torch")
    return Compiled(runtime, towers.get("image"), towers.get("text"), source, runtimes)


def _load_published(store, kind: str) -> tuple[dict[str, bytes] | None, dict, str]:
    from mmray.storage import ArtifactError

    try:
        if store.current(kind) is None:
            return None, {}, ""
        version = store.resolve(kind, verify=store.local)  # a remote copy is verified by local_dir as it streams
        folder = version.local_dir()  # a remote store: downloaded once into the local cache
        files = {}
        for f in FILES.values():
            if f in version.files:
                with open(os.path.join(folder, f), "rb") as fh:
                    files[f] = fh.read()
        return files, version.manifest.get("towers") or {}, version.ref
    except ArtifactError as e:
        log.warning("compiled towers %s unreadable (%s); exporting again", kind, e)
        return None, {}, "exported"


def _publish(store, kind: str, files: dict[str, bytes], report: dict, model_ref: str, catalog_calibration: bool) -> str:
    import onnxruntime as ort

    try:
        with store.begin(kind, config={"opset": OPSET, "onnxruntime": ort.__version__, "torch": torch.__version__},
                         parents={"model": model_ref}) as writer:
            for name, data in files.items():
                writer.write_bytes(name, data)
            version = writer.commit(extra={"towers": report, "calibration": "catalog" if catalog_calibration else "synthetic"})
        return version.ref
    except Exception as e:  # noqa: BLE001 - a read-only store: use the export unpublished
        log.warning("could not publish %s (%s: %s); using the export in this process only", kind,
                    type(e).__name__, str(e)[:200])
        return "exported"
