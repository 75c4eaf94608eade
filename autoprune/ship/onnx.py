"""Shipping an ONNX model: the exported graph checked in onnxruntime against PyTorch on real images
(logits within ``atol``, the same top-1), its accuracy on a split, and static int8 quantization
(onnxruntime's QDQ format, per-channel weights) calibrated on training images. Export and
session helpers live in ``core.measure.onnx``, which the latency meter shares."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.core.measure.onnx import run, session
from autoprune.errors import UserError


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


def quantize_int8(fp32: Path, out: Path, calibration: torch.Tensor) -> Path:
    """Static int8 quantization (QDQ, per-channel weights), activations calibrated on
    ``calibration`` images; the model is pre-processed (shape inference, fusion) first."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
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
