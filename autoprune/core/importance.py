"""Channel-importance criteria, one registry entry each.

Each criterion scores every output channel of a group's root (higher = keep). Scores are
computed once on the dense model and cached, so every trial of a search ranks channels the
same way. Adding a criterion is one decorated class and one test.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.core.groups import Group, build_graph, iter_tp_groups
from autoprune.registry import Registry


@dataclass(frozen=True)
class Calibration:
    """A few training batches for data-dependent criteria (Taylor, activation)."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int = 128


class Criterion:
    """Base class. ``prepare`` is called once on the (private copy of the) dense model before
    any group is scored; ``score`` returns one value per output channel of the group's root."""

    needs_data = False
    #: passes over the calibration images that ``prepare`` runs, in forward-pass equivalents
    #: (a pass with gradients counts 3, as core/compute.py charges it)
    calibration_passes = 0

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        return None

    def score(self, group: tp.dependency.Group, group_id: str) -> torch.Tensor:
        raise NotImplementedError


IMPORTANCES: Registry[type[Criterion]] = Registry("importance method")

#: Zeroes individual weights instead of removing channels (see prune.apply_unstructured).
UNSTRUCTURED = "unstructured"


def method_names() -> list[str]:
    return IMPORTANCES.names() + [UNSTRUCTURED]


class _TorchPruning(Criterion):
    """Delegates to a Torch-Pruning importance with no normalisation (ranking is within a group)."""

    impl: tp.importance.Importance

    def score(self, group: tp.dependency.Group, group_id: str) -> torch.Tensor:
        return self.impl(group)


@IMPORTANCES.register("l1")
class L1(_TorchPruning):
    """Mean over the group's layers of each channel's L1 weight norm (Li et al. 2017)."""

    def __init__(self, seed: int = 0) -> None:
        self.impl = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)


@IMPORTANCES.register("l2")
class L2(_TorchPruning):
    """Mean over the group's layers of each channel's L2 weight norm."""

    def __init__(self, seed: int = 0) -> None:
        self.impl = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)


class _FPGMImportance(tp.importance.FPGMImportance):
    """Torch-Pruning 1.6's ``FPGMImportance.__call__``, with the input side of grouped (not
    depthwise) convs fixed: it repeats a 2-D weight matrix with ``repeat(groups)``, which
    raises "Number of dimensions of repeat dims can not be smaller than number of dimensions
    of tensor" on every RegNet and ResNeXt. Here each input channel is described by the
    weights of the filters that read it (its conv group's), which also takes 1/groups of the
    memory (regnet_y_128gf: 70 MB instead of 2 GB). Otherwise the same computation: per layer,
    each channel's summed distance to the others; reduced over the group."""

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group, **kwargs: object) -> torch.Tensor | None:
        from torch_pruning.pruner import function

        group_imp, group_idxs = [], []
        for item in group:
            layer, prune_fn = item.dep.layer, item.dep.pruning_fn
            if not isinstance(layer, tuple(self.target_types)):
                continue
            transposed = getattr(layer, "transposed", False)
            if prune_fn in (function.prune_conv_out_channels, function.prune_linear_out_channels):
                w = (layer.weight.data.transpose(1, 0) if transposed else layer.weight.data)[item.idxs].flatten(1)
                local = w.abs().pow(self.p)
            elif prune_fn in (function.prune_conv_in_channels, function.prune_linear_in_channels):
                grouped = (prune_fn == function.prune_conv_in_channels and not transposed
                           and layer.groups not in (1, layer.in_channels))
                if grouped:
                    # input channel j of conv group q = j // (in/g) is read by that group's filters only: its row
                    # is their weights at position j % (in/g). (Torch-Pruning repeats the whole matrix instead,
                    # with repeat(layer.groups), which fails on 2-D tensors and would take g times the memory.)
                    g, w = layer.groups, layer.weight.data
                    o, i = w.shape[0] // g, w.shape[1]
                    w = w.reshape(g, o, i, -1).permute(0, 2, 1, 3).reshape(g * i, -1)
                else:
                    w = layer.weight.data.flatten(1) if transposed else layer.weight.data.transpose(0, 1).flatten(1)
                local = w.abs().pow(self.p)[item.idxs]
            else:
                continue  # FPGM does not score BatchNorm or LayerNorm
            group_imp.append(torch.cdist(local.unsqueeze(0), local.unsqueeze(0), p=2).squeeze(0).abs().sum(dim=0))
            group_idxs.append(item.root_idxs)
        if not group_imp:
            return None
        return self._normalize(self._reduce(group_imp, group_idxs), self.normalizer)


@IMPORTANCES.register("fpgm")
class FPGM(_TorchPruning):
    """Filter pruning via geometric median (He et al. 2019): filters closest to the others
    are the most replaceable."""

    def __init__(self, seed: int = 0) -> None:
        self.impl = _FPGMImportance(normalizer=None)


@IMPORTANCES.register("taylor")
class Taylor(_TorchPruning):
    """First-order Taylor (Molchanov et al. 2019): |weight x gradient| summed per channel,
    gradients of the cross-entropy accumulated over the calibration batches."""

    needs_data = True
    calibration_passes = 3

    def __init__(self, seed: int = 0) -> None:
        self.impl = tp.importance.GroupTaylorImportance(normalizer=None)

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        if calibration is None:  # ScoreCache checks needs_data first; a direct caller gets this
            raise ValueError("taylor importance needs calibration data")
        model.eval()
        model.zero_grad(set_to_none=True)
        for start in range(0, len(calibration.y), calibration.batch_size):
            xb = calibration.x[start : start + calibration.batch_size]
            yb = calibration.y[start : start + calibration.batch_size]
            F.cross_entropy(model(xb), yb, reduction="sum").backward()


@IMPORTANCES.register("activation")
class Activation(Criterion):
    """Activation-based neuron importance: mean |input| each channel brings to the layers
    that consume it (i.e. after BN and the nonlinearity), over the calibration images.

    Written here rather than delegated: Torch-Pruning 1.6's ActivationImportance keeps only the
    last forward pass and, on a group whose channels reach a layer through a concatenation
    after a split, indexes past the end of its own score vector ("index 12 is out of bounds")."""

    needs_data = True
    calibration_passes = 1

    def __init__(self, seed: int = 0) -> None:
        self.stats: dict[nn.Module, torch.Tensor] = {}

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        if calibration is None:
            raise ValueError("activation importance needs calibration data")
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = {}

        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().abs().float()
            x = x.transpose(0, 1).flatten(1) if isinstance(module, nn.Conv2d) else x.flatten(0, -2).t()
            sums[module] = sums.get(module, 0) + x.sum(dim=1)  # per input channel / feature
            counts[module] = counts.get(module, 0) + x.shape[1]

        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        handles = [m.register_forward_pre_hook(record) for m in layers]
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(calibration.y), calibration.batch_size):
                    model(calibration.x[start : start + calibration.batch_size])
        finally:
            for h in handles:
                h.remove()
        self.stats = {m: sums[m] / counts[m] for m in sums}

    def score(self, group: tp.dependency.Group, group_id: str) -> torch.Tensor:
        channels = len(group[0].idxs)
        total, seen = torch.zeros(channels), torch.zeros(channels)
        graph = group._DG
        for item in group:
            layer = item.dep.target.module
            if layer not in self.stats or not graph.is_in_channel_pruning_fn(item.dep.handler):
                continue
            idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
            roots = torch.as_tensor([int(r) for r in item.root_idxs], dtype=torch.long)
            ok = (idxs < len(self.stats[layer])) & (roots < channels)
            total.scatter_add_(0, roots[ok], self.stats[layer][idxs[ok]])
            seen.scatter_add_(0, roots[ok], torch.ones(int(ok.sum())))
        return total / seen.clamp_min(1)


@IMPORTANCES.register("random")
class Random(Criterion):
    """A uniform random ranking, seeded per group: the control every criterion must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, group: tp.dependency.Group, group_id: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{group_id}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(len(group[0].idxs), generator=gen)


@contextlib.contextmanager
def _borrowed(model: nn.Module) -> Iterator[None]:
    """Lend the dense model to a data-dependent criterion without copying it (a copy of a
    600M-parameter model is 2.5 GB): its gradients, ``requires_grad`` flags and train/eval
    modes are put back as they were afterwards, and the criterion removes its own hooks."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    flags = [p.requires_grad for p in params]
    modes = {m: m.training for m in model.modules()}
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        yield
    finally:
        for p, g, f in zip(params, grads, flags, strict=True):
            p.grad = g
            p.requires_grad_(f)
        for m, training in modes.items():
            m.training = training


class ScoreCache:
    """Channel scores of every group of one dense model, per criterion, computed lazily once.

    Every criterion reads the dense model itself, without a copy: weight-based ones under
    ``no_grad``; data-dependent ones (taylor: gradients, activation: hooks) borrow it, and its
    gradients, flags, modes and hooks are as before once they are done."""

    def __init__(
        self,
        dense: nn.Module,
        example_input: torch.Tensor,
        ignored: Sequence[str],
        *,
        calibration: Calibration | None = None,
        seed: int = 0,
        graph: tp.DependencyGraph | None = None,
    ) -> None:
        self._dense = dense
        self._graph = graph  # the dense model's graph, if the caller has it already
        self._example = example_input
        self._ignored = list(ignored)
        self._calibration = calibration
        self._seed = seed
        self._scores: dict[str, dict[str, torch.Tensor]] = {}

    def scores(self, method: str) -> dict[str, torch.Tensor]:
        """{group id: per-channel score} for ``method``."""
        if method not in self._scores:
            criterion = IMPORTANCES.get(method)(seed=self._seed)
            if criterion.needs_data and self._calibration is None:
                raise ValueError(f"importance {method!r} needs calibration data")
            model = self._dense
            graph = self._graph if self._graph is not None else build_graph(model, self._example)
            self._graph = graph
            with _borrowed(model) if criterion.needs_data else contextlib.nullcontext():
                if criterion.needs_data:
                    criterion.prepare(model, self._calibration)
                result = {}
                with torch.no_grad():
                    for gid, _, group in iter_tp_groups(model, graph, self._ignored):
                        s = criterion.score(group, gid)
                        if s is None:  # Torch-Pruning returns None when no layer of the group has weights
                            s = torch.zeros(len(group[0].idxs))
                        result[gid] = s.detach().float().cpu()
            self._scores[method] = result
        return self._scores[method]

    def keep_indices(self, group: Group, method: str, counts: Sequence[int]) -> list[int]:
        """The highest-scoring channels of ``group``, ascending; ties broken by channel index.

        ``counts`` holds how many to keep per segment (see :class:`autoprune.groups.Group`);
        each segment is ranked on its own. With ``channel_groups`` G > 1 the channels form G
        equal slices (grouped convs, GroupNorm): scores are averaged over the slices and the
        same ``counts[0] / G`` positions are kept in each."""
        s = self.scores(method)[group.id]
        g = group.channel_groups
        if g > 1:
            size = len(s) // g
            per_slice = s.view(g, size).mean(dim=0)
            order = torch.argsort(per_slice, descending=True, stable=True)[: counts[0] // g]
            return sorted(k * size + int(i) for k in range(g) for i in order)
        kept: list[int] = []
        for segment, count in zip(group.segments or (tuple(range(group.channels)),), counts, strict=True):
            idx = torch.tensor(segment)
            order = torch.argsort(s[idx], descending=True, stable=True)[:count]
            kept.extend(int(i) for i in idx[order])
        return sorted(kept)
