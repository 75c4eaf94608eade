"""Channel-importance criteria, one registry entry each.

Each criterion scores every output channel of a group's root (higher = keep). Scores are
computed once on the dense model and cached, so every trial of a search ranks channels the
same way. Adding a criterion is one decorated class and one test.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.groups import build_graph, iter_tp_groups
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


@IMPORTANCES.register("fpgm")
class FPGM(_TorchPruning):
    """Filter pruning via geometric median (He et al. 2019): filters closest to the others
    are the most replaceable."""

    def __init__(self, seed: int = 0) -> None:
        self.impl = tp.importance.FPGMImportance(normalizer=None)


@IMPORTANCES.register("taylor")
class Taylor(_TorchPruning):
    """First-order Taylor (Molchanov et al. 2019): |weight x gradient| summed per channel,
    gradients of the cross-entropy accumulated over the calibration batches."""

    needs_data = True

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
class Activation(_TorchPruning):
    """Activation-based neuron importance: mean |input| each channel brings to the layers
    that consume it (i.e. after BN and the nonlinearity), over the calibration images."""

    needs_data = True

    def __init__(self, seed: int = 0) -> None:
        self.impl = tp.importance.ActivationImportance(normalizer=None)

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        if calibration is None:
            raise ValueError("activation importance needs calibration data")
        model.eval()
        # Torch-Pruning keeps the statistics of the last forward pass only: one pass over all
        # calibration images at once.
        with torch.no_grad(), self.impl.compute_importance(model):
            model(calibration.x)


@IMPORTANCES.register("random")
class Random(Criterion):
    """A uniform random ranking, seeded per group: the control every criterion must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, group: tp.dependency.Group, group_id: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{group_id}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(len(group[0].idxs), generator=gen)


class ScoreCache:
    """Channel scores of every group of one dense model, per criterion, computed lazily once.

    Works on a private deep copy, so gradients and hooks never leak into the caller's model."""

    def __init__(
        self,
        dense: nn.Module,
        example_input: torch.Tensor,
        ignored: Sequence[str],
        *,
        calibration: Calibration | None = None,
        seed: int = 0,
    ) -> None:
        self._model = copy.deepcopy(dense)
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
            model = copy.deepcopy(self._model)
            criterion.prepare(model, self._calibration)
            graph = build_graph(model, self._example)
            result = {}
            with torch.no_grad():
                for gid, _, group in iter_tp_groups(model, graph, self._ignored):
                    s = criterion.score(group, gid)
                    if s is None:  # Torch-Pruning returns None when no layer of the group has weights
                        s = torch.zeros(len(group[0].idxs))
                    result[gid] = s.detach().float().cpu()
            self._scores[method] = result
        return self._scores[method]

    def keep_indices(self, group_id: str, method: str, keep: int, channel_groups: int = 1) -> list[int]:
        """The ``keep`` highest-scoring channels, ascending; ties broken by channel index.

        With ``channel_groups`` G > 1 the channels form G equal slices (grouped convs): scores
        are averaged over the slices and the same ``keep / G`` positions are kept in each."""
        s = self.scores(method)[group_id]
        size = len(s) // channel_groups
        per_slice = s.view(channel_groups, size).mean(dim=0)
        order = torch.argsort(per_slice, descending=True, stable=True)[: keep // channel_groups]
        return sorted(g * size + int(i) for g in range(channel_groups) for i in order)
