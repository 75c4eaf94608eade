"""Predict a policy's FLOPs from its channel counts, without pruning anything.

fvcore's per-layer counts of the dense model are scaled by the fraction of input and output
channels each layer keeps: a conv or linear layer costs in x out, BatchNorm and depthwise
convs cost out. Which group controls each side of each layer comes from Torch-Pruning's
dependency graph (with per-group channel counts, so concatenations are handled). FLOPs of
operations outside leaf modules (functional pooling, ...) are kept constant, so the
prediction is approximate: it decides cheaply which sampled policies are clearly over
budget, and the exact fvcore count of the pruned network is still what gets recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoprune.groups import build_graph, iter_tp_groups
from autoprune.measure import flop_analysis


def _size(module: nn.Module, side: str) -> int | None:
    names = {"in": ("in_channels", "in_features", "num_features"), "out": ("out_channels", "out_features", "num_features")}
    for attr in names[side]:
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None


class FlopsPredictor:
    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, ignored: Sequence[str]) -> None:
        graph = build_graph(model, example_input)
        names = {m: n for n, m in model.named_modules()}
        modules = dict(model.named_modules())
        self.channels: dict[str, int] = {}
        sides: dict[tuple[str, str], dict[str, int]] = {}  # (module, "in"/"out") -> {group: channels}
        for gid, root, group in iter_tp_groups(model, graph, ignored):
            self.channels[gid] = int(graph.get_out_channels(root))
            for dep, idxs in group:
                name = names.get(dep.target.module)  # None for traced ops (add, concat, relu)
                if name is None:
                    continue
                side = "out" if graph.is_out_channel_pruning_fn(dep.handler) else (
                    "in" if graph.is_in_channel_pruning_fn(dep.handler) else None)
                if side:
                    sides.setdefault((name, side), {})
                    sides[(name, side)][gid] = sides[(name, side)].get(gid, 0) + len(idxs)
        analysis = flop_analysis(model, example_input)
        per_module, total = analysis.by_module(), analysis.total()
        self.terms: list[tuple[float, list[tuple[str, float]], list[tuple[str, float]]]] = []
        leaf_sum = 0
        for name, module in modules.items():
            flops = per_module.get(name, 0)
            if not flops or any(True for _ in module.children()):
                continue
            leaf_sum += flops
            per_channel_only = isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels)
            terms = {}
            for side in ("in", "out"):
                if side == "in" and per_channel_only:
                    terms[side] = []
                    continue
                size = _size(module, side)
                groups = sides.get((name, side), {})
                terms[side] = [(gid, n / size) for gid, n in groups.items()] if size else []
            self.terms.append((float(flops), terms["in"], terms["out"]))
        self.constant = float(total - leaf_sum)

    def predict(self, kept: dict[str, int]) -> float:
        """FLOPs when group ``g`` keeps ``kept[g]`` channels (groups not named stay whole)."""
        frac = {g: kept.get(g, n) / n for g, n in self.channels.items()}

        def scale(side: list[tuple[str, float]]) -> float:
            return 1.0 - sum(share for _, share in side) + sum(share * frac[g] for g, share in side)

        return self.constant + sum(f * scale(i) * scale(o) for f, i, o in self.terms)
