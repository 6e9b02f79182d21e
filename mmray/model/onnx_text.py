"""The text tower run by ONNX Runtime (`index.text_runtime: onnx`), for query-time embedding.

A one-query forward of MiniLM through transformers is mostly Python (module calls, mask helpers,
an `inspect.signature` per layer), and all of it holds the GIL that the Serve replica's HTTP
event loop needs too. The same graph exported to ONNX runs in ONNX Runtime's C++ with the GIL
released: about 3x less CPU per query here and two queries truly in parallel on two cores
(BENCHMARKS.md, "Serving"). Only the tower's features go through ONNX; the projection head stays
in torch, so an Embedder has the same two levels (features, embeddings) on either runtime.

The export happens in memory when a model is loaded (a second or two; nothing is written next to
a published, immutable checkpoint) and is checked against torch on probe texts of different
lengths, padded in one batch. Any failure (a tower that is not a torch graph, such as the numpy
Universal Sentence Encoder; a missing onnxruntime; outputs that disagree) leaves the torch tower
in use, with one warning naming why.
"""
from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch

log = logging.getLogger(__name__)

# Texts of different lengths, so the check covers padding and the dynamic sequence axis.
PROBES = ["black hoodie for women", "waterproof", "a lightweight jacket with a hood and two zip pockets, for running"]
TOLERANCE = 1e-4


class _Features(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.text_features(input_ids, attention_mask)


class OnnxTextFeatures:
    """`model.text_features(input_ids, attention_mask)` through an ONNX Runtime session."""

    def __init__(self, session):
        self.session = session

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return torch.from_numpy(out)

    @classmethod
    def build(cls, model) -> OnnxTextFeatures | None:
        """Export `model`'s text tower and check it; None (torch stays in use) when that fails.
        ONNX Runtime gets as many threads as torch has here (1 in a 1-CPU Ray actor)."""
        if model.tokenizer is None or not any(True for _ in model.text_tower.parameters()):
            log.warning("text_runtime onnx: the %s text tower is not a torch graph; using it as it is",
                        type(model.text_tower).__name__)
            return None
        try:
            import onnxruntime as ort

            tok = model.tokenize(PROBES)
            buf = io.BytesIO()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python; the check below decides
                torch.onnx.export(_Features(model).eval(), (tok["input_ids"], tok["attention_mask"]), buf,
                                  input_names=["input_ids", "attention_mask"], output_names=["features"],
                                  dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                                "attention_mask": {0: "batch", 1: "tokens"},
                                                "features": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            runner = cls(ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"]))
            diff = 0.0
            for probe in (tok, model.tokenize(PROBES[:1])):  # padded batch, and one query alone
                with torch.no_grad():
                    expected = model.text_features(**probe).float()
                diff = max(diff, float((runner(**probe) - expected).abs().max()))
        except Exception as e:  # noqa: BLE001 - any failure means: keep the torch tower
            log.warning("text_runtime onnx unavailable (%s: %s); using torch", type(e).__name__, str(e)[:200])
            return None
        if not np.isfinite(diff) or diff > TOLERANCE:
            log.warning("text_runtime onnx disagrees with torch (max |diff| %.2g > %g); using torch", diff, TOLERANCE)
            return None
        log.info("text tower on ONNX Runtime (max |diff| vs torch %.1e)", diff)
        return runner
