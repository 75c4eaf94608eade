"""Measured latency as a budget (``--budget-latency``).

A pruned architecture's forward time is measured side by side with the dense model's, in one
process, on the machine the trial runs on: ``rounds`` rounds of ``repeats`` forward passes
each, dense and pruned alternating (the first of each pair swaps every round). Each model's
figure is its *fastest* pass: other processes can only make a pass slower, so the minimum is
the figure they disturb least (timeit's advice). With two other jobs on 2 cores, two runs of
six measurements of one architecture gave ratios of the minimums of 0.45-0.47 in onnxruntime
and 0.57-0.71 in PyTorch, and ratios of the medians of 0.28-1.04 and 0.41-0.81
(``scripts/probe_latency_noise.py``). The ratio is the number a fractional budget (``0.6``: at most 0.6 of
dense) is compared with; an absolute budget (``5ms``) is compared with the pruned figure.

Latency depends on the channel counts only, not the weights, so each architecture is measured
once and cached: in memory, and in ``cache_dir/latency-<key>.json`` where the key hashes
everything that changes the number (the dense architecture's parameter shapes, the input
shape, batch, runtime, device, CPU model, threads, torch and onnxruntime versions). Workers
on one machine share that file; one on another machine measures its own. Two processes that
write the file at once may drop each other's newest entry, which is then measured again.

Runtimes: ``torch`` (eager PyTorch, on the search's device) and ``onnxruntime`` (each model
exported to ONNX and run by onnxruntime's CPU provider, as ``apply`` ships it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.core.units import LATENCY_RUNTIMES as RUNTIMES
from autoprune.core.units import parse_latency

#: what each measurement stores, next to the numbers
CONVENTION = ("wall-clock ms of the fastest eval-mode forward pass of {n}; dense and pruned measured side by "
              "side in {rounds} alternating rounds of {repeats}")


@dataclass(frozen=True)
class LatencyBudget:
    kind: str  # "fraction" (of dense) or "ms"
    value: float
    text: str

    @classmethod
    def parse(cls, text: str, name: str = "budget_latency") -> LatencyBudget:
        kind, value = parse_latency(text, name)
        return cls(kind, value, str(text).strip())

    def violation(self, measured: Mapping[str, float]) -> float:
        """Optuna's constraint value (<= 0 is feasible): the relative excess over the budget."""
        got = measured["ratio"] if self.kind == "fraction" else measured["ms"]
        return got / self.value - 1

    def describe(self, measured: Mapping[str, float]) -> str:
        if self.kind == "fraction":
            return f"latency {measured['ratio']:.3f} of dense ({measured['ms']:.3g} ms) > budget {self.value:g}"
        return f"latency {measured['ms']:.3g} ms > budget {self.value:g} ms"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LatencyMeter:
    """Latency of pruned copies of ``dense`` against ``dense`` itself, cached per
    architecture (see the module docstring). ``device``: where the ``torch`` runtime runs."""

    def __init__(self, dense: nn.Module, example_input: torch.Tensor, *, batch: int = 1, runtime: str = "torch",
                 device: torch.device | str = "cpu", cache_dir: Path | None = None, rounds: int = 5,
                 repeats: int = 5) -> None:
        if runtime not in RUNTIMES:
            from autoprune.errors import unknown_choice

            raise unknown_choice("latency runtime", runtime, RUNTIMES)
        self.dense = dense
        self.example_input = example_input[:1].detach().cpu()
        self.batch, self.runtime, self.device = batch, runtime, torch.device(device)
        self.rounds, self.repeats = rounds, repeats
        self.setup = self._setup()
        self.path = Path(cache_dir) / f"latency-{self.key()}.json" if cache_dir is not None else None
        self._cache: dict[str, dict[str, float]] = self._read()
        self._dense_runner: Callable[[], None] | None = None
        #: architectures measured by this process (the others came from the cache)
        self.measured = 0

    def _setup(self) -> dict[str, Any]:
        shapes = [[name, list(p.shape)] for name, p in self.dense.state_dict().items()]
        setup: dict[str, Any] = {
            "architecture": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16],
            "input_shape": list(self.example_input.shape[1:]), "batch": self.batch, "runtime": self.runtime,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_model(),
            "device": str(self.device) if self.runtime == "torch" else "cpu",
            "rounds": self.rounds, "repeats": self.repeats, "statistic": "min",
        }
        if self.runtime == "torch" and self.device.type == "cuda":
            setup["gpu"] = torch.cuda.get_device_name(self.device)
        if self.runtime == "onnxruntime":
            import onnxruntime

            setup["onnxruntime"] = onnxruntime.__version__
        return setup

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.setup, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        where = self.setup.get("gpu", self.setup["cpu"]) if self.runtime == "torch" else self.setup["cpu"]
        return (f"{self.runtime}, batch {self.batch}, {self.setup['device']} ({where}), {self.setup['threads']} "
                f"thread(s); " + CONVENTION.format(n=self.rounds * self.repeats, rounds=self.rounds, repeats=self.repeats))

    # ------------------------------------------------------------------ cache
    def _read(self) -> dict[str, dict[str, float]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache is measured again, not trusted
        return data.get("entries", {}) if isinstance(data, dict) and data.get("setup") == self.setup else {}

    def _write(self, arch: str, entry: dict[str, float]) -> None:
        if self.path is None:
            return
        merged = {**self._read(), arch: entry}  # what other processes added meanwhile stays
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"setup": self.setup, "entries": merged}, f)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one

    @staticmethod
    def arch_key(channels: Mapping[str, int]) -> str:
        return json.dumps(sorted(channels.items()))

    def cached(self, channels: Mapping[str, int]) -> dict[str, float] | None:
        return self._cache.get(self.arch_key(channels))

    # ------------------------------------------------------------------ measuring
    def _runner(self, model: nn.Module, tmp: Path, name: str) -> Callable[[], None]:
        x = self.example_input.expand(self.batch, *self.example_input.shape[1:]).contiguous()
        if self.runtime == "onnxruntime":
            from autoprune.core.measure import onnx as ox

            sess = ox.session(ox.export(model, self.example_input, tmp / f"{name}.onnx"),
                              threads=torch.get_num_threads())
            feed = {sess.get_inputs()[0].name: x.numpy()}
            return lambda: sess.run(None, feed)
        from autoprune.core.device import synchronize

        model = model.to(self.device).eval()
        xd = x.to(self.device)

        def forward() -> None:
            with torch.no_grad():
                model(xd)
            synchronize(self.device)

        return forward

    def measure(self, model: nn.Module, channels: Mapping[str, int]) -> dict[str, float]:
        """{"ms", "dense_ms", "ratio"} of ``model`` (a pruned copy of the dense model whose kept
        channel counts are ``channels``), from the cache or measured now."""
        arch = self.arch_key(channels)
        if arch in self._cache:
            return self._cache[arch]
        import copy

        with tempfile.TemporaryDirectory() as tmp:  # onnxruntime holds a session's model in memory
            if self._dense_runner is None:
                self._dense_runner = self._runner(copy.deepcopy(self.dense), Path(tmp), "dense")
            dense = self._dense_runner
            pruned = self._runner(copy.deepcopy(model), Path(tmp), "pruned")
            samples: dict[str, list[float]] = {"dense": [], "pruned": []}
            for run in (dense, pruned):  # warm-up: first calls allocate and pick kernels
                run()
                run()
            for r in range(self.rounds):
                for who in (("dense", "pruned") if r % 2 == 0 else ("pruned", "dense")):
                    run = dense if who == "dense" else pruned
                    for _ in range(self.repeats):
                        t0 = time.perf_counter()
                        run()
                        samples[who].append((time.perf_counter() - t0) * 1000)
        ms, dense_ms = min(samples["pruned"]), min(samples["dense"])  # see the module docstring
        entry = {"ms": round(ms, 4), "dense_ms": round(dense_ms, 4), "ratio": round(ms / dense_ms, 4)}
        self._cache[arch] = entry
        self.measured += 1
        self._write(arch, entry)
        return entry


