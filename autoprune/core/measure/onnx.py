"""ONNX export (dynamic batch dimension, opset 18) and onnxruntime sessions: what the latency
meter times and what ``apply`` ships (its checks and int8 quantization are in ``ship/onnx.py``)."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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


