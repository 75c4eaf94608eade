"""Measurements of a (pruned) model. Conventions, also stored with every trial:

- FLOPs are counted by fvcore's FlopCountAnalysis on one input of the task's shape
  (batch 1), in eval mode. fvcore counts one fused multiply-add as ONE flop (so its "flops"
  are MACs): a conv costs out_elements x in_channels/groups x kernel area, a linear layer
  in x out (biases not counted). It also counts BatchNorm (2 per element in eval mode) and
  adaptive average pooling (1 per input element); max pooling, activations and additions
  are not counted.
- Unstructured sparsity does not lower these FLOPs: the dense kernels still run.
- ``params`` counts every parameter element; ``nonzeros`` counts those that are not zero.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

FLOP_CONVENTION = "fvcore FlopCountAnalysis, batch 1, eval mode; 1 multiply-add = 1 flop; BatchNorm (2/element) and adaptive avg pooling (1/element) counted, max pooling and activations not"


def flop_analysis(model: nn.Module, example_input: torch.Tensor) -> Any:
    """fvcore's FlopCountAnalysis of one forward pass on ``example_input[:1]`` in eval mode,
    already run (total and per-module counts cached), with its warnings silenced."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    logger = logging.getLogger("fvcore")
    level = logger.level
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            logger.setLevel(logging.ERROR)
            analysis = FlopCountAnalysis(model, example_input[:1])
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.total()  # runs the trace while warnings are silenced
            return analysis
    finally:
        logger.setLevel(level)  # the caller's logging setup is left as it was
        model.train(was_training)


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """fvcore FLOPs of one forward pass on ``example_input`` (see the module docstring)."""
    return int(flop_analysis(model, example_input).total())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzeros(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@torch.no_grad()
def latency_ms(model: nn.Module, example_input: torch.Tensor, *, batch: int = 64, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one eval-mode forward pass on a batch of ``batch``,
    on the model's device (synchronised on CUDA) and the current thread setting. Noisy:
    compare models side by side in one run."""
    from autoprune.core.device import synchronize

    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), example_input).device
    x = example_input[:1].to(device).expand(batch, *example_input.shape[1:]).contiguous()
    for _ in range(warmup):
        model(x)
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        synchronize(device)  # CUDA runs asynchronously: wait for the kernels before reading the clock
        times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return statistics.median(times)
