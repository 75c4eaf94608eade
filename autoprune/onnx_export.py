"""ONNX export of a pruned model, checked with onnxruntime, and optional int8 quantization.

The exported graph has a dynamic batch dimension (opset 18). ``check`` runs it in
onnxruntime next to PyTorch on real images: the logits must agree within ``atol`` and give
the same top-1. ``quantize_int8`` writes a statically quantized model (onnxruntime's QDQ
format, per-channel weights), calibrated on training images.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import UserError

OPSET = 18


def export(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (on the CPU, eval mode) to ``path`` with a dynamic batch dimension."""
    model = model.cpu().eval()
    x = example_input[:2].cpu().float().contiguous()
    if len(x) < 2:
        x = x.expand(2, *x.shape[1:]).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
        except Exception:  # noqa: BLE001 - the exporter of torch.export refuses some models: the TorchScript one
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              opset_version=OPSET, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def session(path: Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run(sess: Any, x: torch.Tensor) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy().astype(np.float32)})[0]


def check(path: Path, model: nn.Module, x: torch.Tensor, *, atol: float = 1e-4) -> dict[str, Any]:
    """Run ``x`` through onnxruntime and PyTorch; refuse an export that disagrees."""
    with torch.no_grad():
        expected = model.cpu().eval()(x.cpu()).numpy()
    got = run(session(path), x)
    diff = float(np.abs(got - expected).max())
    top1 = bool((got.argmax(1) == expected.argmax(1)).all())
    if diff > atol or not top1:
        raise UserError(f"the ONNX export {path} disagrees with PyTorch (largest logit difference {diff:.2e}, "
                        f"same top-1: {top1}); the state dict and policy.json are still valid")
    return {"max_abs_logit_difference": diff, "same_top1": top1, "images": len(x)}


def accuracy(sess: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    for x, y in batches:
        correct += int((run(sess, x).argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / max(1, total)


def latency_ms(sess: Any, x: torch.Tensor, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one onnxruntime run on ``x``."""
    feed = {sess.get_inputs()[0].name: x.cpu().numpy().astype(np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def quantize_int8(fp32: Path, out: Path, calibration: torch.Tensor) -> Path:
    """Static int8 quantization (QDQ, per-channel weights), activations calibrated on
    ``calibration`` images; the model is pre-processed (shape inference, fusion) first."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calibration[i : i + 32] for i in range(0, len(calibration), 32)])
            self.name = session(fp32).get_inputs()[0].name

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {self.name: batch.cpu().numpy().astype(np.float32)}

    prepared = out.with_name(out.stem + ".pre.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    prepared.unlink(missing_ok=True)
    return out
