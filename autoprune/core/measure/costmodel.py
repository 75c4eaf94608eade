"""Predict a policy's FLOPs from its channel counts, without pruning anything.

fvcore's per-layer counts of the dense model are scaled by the fraction of input and output
channels each layer keeps: a conv or linear layer costs in x out; BatchNorm, GroupNorm,
LayerNorm and depthwise convs cost out. Which group (and which segment of it, see
``groups.py``) controls each side of each layer comes from Torch-Pruning's dependency graph.

Parameter-free layers that fvcore counts (average pooling, e.g. in squeeze-and-excitation
gates) are not in Torch-Pruning's groups: their channels are traced back, through the
tensors one forward pass hands from layer to layer, to the layer that produced their input,
and they scale with its output channels. FLOPs of operations outside any layer (a functional
pooling call in a ``forward``) are kept constant, so the prediction errs high, by little; it
decides cheaply which sampled policies are clearly over budget, and the exact fvcore count of
the pruned network is still what gets recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from autoprune.core.groups import build_graph, iter_tp_groups, segments
from autoprune.core.measure.flops import flop_analysis

#: (group id, segment index, share of the layer side's channels)
Side = list[tuple[str, int, float]]

_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _size(module: nn.Module, side: str) -> int | None:
    names = {"in": ("in_channels", "in_features", "num_features", "num_channels"),
             "out": ("out_channels", "out_features", "num_features", "num_channels")}
    for attr in names[side]:
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def _producers(model: nn.Module, example_input: torch.Tensor, layers: Sequence[str]) -> dict[str, str]:
    """{layer: the nearest layer with weights upstream of its input}, for each of ``layers``,
    found by walking the autograd graph of one forward pass back from the layer's input
    (through functional activations, additions and the like) to the first operation that
    reads a module's weight."""
    owner = {p: n for n, m in model.named_modules() for p in m.parameters(recurse=False)}
    inputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name: str):  # noqa: ANN202
        def record(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0]

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layers]
    was_training = model.training
    try:
        with torch.enable_grad():
            model.eval()(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = {}
    for name, tensor in inputs.items():
        todo, seen = [tensor.grad_fn], set()
        while todo:
            fn = todo.pop(0)
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            found = {owner[v] for nf, _ in fn.next_functions if (v := getattr(nf, "variable", None)) in owner}
            if found:
                if len(found) == 1:
                    out[name] = found.pop()
                break
            todo.extend(nf for nf, _ in fn.next_functions)
    return out


class FlopsPredictor:
    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, ignored: Sequence[str],
                 graph: tp.DependencyGraph | None = None) -> None:
        graph = graph if graph is not None else build_graph(model, example_input)
        names = {m: n for n, m in model.named_modules()}
        modules = dict(model.named_modules())
        self.channels: dict[str, int] = {}
        self.segment_sizes: dict[str, list[int]] = {}
        counts: dict[tuple[str, str], dict[tuple[str, int], int]] = {}  # (layer, side) -> {(group, segment): n}
        for gid, root, group in iter_tp_groups(model, graph, ignored):
            channels = int(graph.get_out_channels(root))
            self.channels[gid] = channels
            segs = segments(group, channels) or (tuple(range(channels)),)
            self.segment_sizes[gid] = [len(s) for s in segs]
            segment_of = {r: k for k, seg in enumerate(segs) for r in seg}
            for item in group:
                dep = item.dep
                name = names.get(dep.target.module)  # None for traced ops (add, concat, relu)
                if name is None:
                    continue
                side = "out" if graph.is_out_channel_pruning_fn(dep.handler) else (
                    "in" if graph.is_in_channel_pruning_fn(dep.handler) else None)
                if side is None:
                    continue
                slot = counts.setdefault((name, side), {})
                for r in item.root_idxs or ():
                    if r is not None and int(r) in segment_of:
                        key = (gid, segment_of[int(r)])
                        slot[key] = slot.get(key, 0) + 1
        analysis = flop_analysis(model, example_input)
        per_module, total = analysis.by_module(), analysis.total()
        free = [n for n, m in modules.items() if per_module.get(n, 0) and not any(True for _ in m.children())
                and not any(True for _ in m.parameters(recurse=False)) and not isinstance(m, ROOTLESS)]
        producers = _producers(model, example_input, free) if free else {}

        def side_of(name: str, module: nn.Module, side: str) -> Side:
            size = _size(module, side)
            found = counts.get((name, side), {})
            return [(g, k, n / size) for (g, k), n in found.items()] if size else []

        self.terms: list[tuple[float, Side, Side]] = []
        leaf_sum = 0
        for name, module in modules.items():
            flops = per_module.get(name, 0)
            if not flops or any(True for _ in module.children()):
                continue
            leaf_sum += flops
            if not any(True for _ in module.parameters(recurse=False)) and not isinstance(module, ROOTLESS):
                # parameter-free (pooling): its channels are those of the layer that produced its input
                source = producers.get(name)
                out = side_of(source, modules[source], "out") if source is not None else []
                self.terms.append((float(flops), [], out))
                continue
            per_channel_only = isinstance(module, _PER_CHANNEL) or (
                isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels)
            inside = [] if per_channel_only else side_of(name, module, "in")
            self.terms.append((float(flops), inside, side_of(name, module, "out")))
        self.constant = float(total - leaf_sum)

    def predict(self, kept: Mapping[str, int | Sequence[int]]) -> float:
        """FLOPs when group ``g`` keeps ``kept[g]`` channels, a count or one count per segment
        (a plain count is spread evenly over the segments); groups not named stay whole."""
        frac: dict[tuple[str, int], float] = {}
        for g, sizes in self.segment_sizes.items():
            value = kept.get(g, self.channels[g])
            per_segment = [value / self.channels[g]] * len(sizes) if isinstance(value, (int, float)) else [
                n / size for n, size in zip(value, sizes, strict=True)]
            frac.update({(g, k): f for k, f in enumerate(per_segment)})

        def scale(side: Side) -> float:
            return 1.0 - sum(share for _, _, share in side) + sum(share * frac[(g, k)] for g, k, share in side)

        return self.constant + sum(f * scale(i) * scale(o) for f, i, o in self.terms)


#: layers with parameters that ``_PER_CHANNEL`` and the conv / linear sides already cover
ROOTLESS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.Conv2d, nn.Linear)
