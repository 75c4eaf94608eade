"""Apply a policy to a copy of a dense model: remove channels structurally (Torch-Pruning
does the surgery on every coupled layer) and, per group, optional unstructured sparsity."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.costmodel import FlopsPredictor
from autoprune.errors import UserError
from autoprune.groups import ROOT_TYPES, Group, build_graph, find_groups, pruning_group
from autoprune.importance import UNSTRUCTURED, Calibration, ScoreCache
from autoprune.policy import GroupChoice, Policy


def kept_channels(channels: int, keep: float, *, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels left of ``channels`` at ratio ``keep``: rounded to a multiple of ``round_to``,
    never below ``min_channels`` (nor above ``channels``)."""
    k = round(channels * keep / round_to) * round_to
    return max(1, min(channels, max(k, min_channels)))


def apply_unstructured(layers: Sequence[nn.Module], keep: float) -> None:
    """Zero the smallest-magnitude ``1 - keep`` of each layer's weights, in place, and mask
    their gradients so fine-tuning keeps them at zero (momentum and weight decay included).

    This lowers the nonzero-parameter count, not the FLOPs that fvcore counts: the dense
    kernels still multiply the zeros."""
    for layer in layers:
        w = layer.weight
        n_zero = int(w.numel() * (1 - keep))
        if n_zero <= 0:
            continue
        order = torch.argsort(w.detach().abs().flatten(), stable=True)[:n_zero]
        mask = torch.ones(w.numel())
        mask[order] = 0.0
        mask = mask.view_as(w)
        with torch.no_grad():
            w.mul_(mask)
        w.register_hook(lambda grad, m=mask: grad * m)
        layer._autoprune_mask = mask  # type: ignore[attr-defined]


class Pruner:
    """Applies policies to fresh copies of one dense model.

    The dependency groups and the channel scores of every criterion are computed once, on the
    dense model, and shared by all trials."""

    def __init__(
        self,
        dense: nn.Module,
        example_input: torch.Tensor,
        *,
        ignored: Sequence[str],
        calibration: Calibration | None = None,
        seed: int = 0,
        round_to: int = 1,
        min_channels: int = 1,
    ) -> None:
        if round_to < 1 or min_channels < 1:
            raise UserError(f"round_to ({round_to}) and min_channels ({min_channels}) must be >= 1")
        self.dense = dense
        self.example_input = example_input
        self.ignored = list(ignored)
        self.groups: list[Group] = find_groups(dense, example_input, ignored=self.ignored)
        if not self.groups:
            raise UserError("the model has no prunable channel groups (everything is ignored or coupled to the stem/head)")
        self.round_to = round_to
        self.min_channels = min_channels
        self.scores = ScoreCache(dense, example_input, self.ignored, calibration=calibration, seed=seed)
        self._predictor: FlopsPredictor | None = None
        self._dense_graph = None

    def settings(self) -> dict[str, object]:
        """What, besides a policy's kept indices, decides the network it gives: stored in the
        policy's ``meta`` so that :func:`apply_policy` replays it exactly."""
        return {"ignored": list(self.ignored), "round_to": self.round_to, "min_channels": self.min_channels}

    def predict_flops(self, policy: Policy) -> float:
        """FLOPs of ``policy`` predicted from its channel counts, nothing pruned (see costmodel);
        the predictor is built once, on first use."""
        if self._predictor is None:
            self._predictor = FlopsPredictor(self.dense, self.example_input, ignored=self.ignored)
        return self._predictor.predict(self.resolve(policy, indices=False).channels())

    def kept(self, group: Group, keep: float) -> int:
        """Channels kept of ``group`` at ratio ``keep``; a multiple of its channel groups."""
        g = group.channel_groups
        per_slice = kept_channels(group.channels // g, keep, round_to=max(1, self.round_to // g),
                                  min_channels=-(-self.min_channels // g))
        return per_slice * g

    def resolve(self, policy: Policy, *, indices: bool = True) -> Policy:
        """Fill in channel counts (and, with ``indices``, the kept channel indices) of every
        group; groups missing from the policy stay whole."""
        by_id = {g.id: g for g in self.groups}
        unknown = sorted(set(policy.groups) - set(by_id))
        if unknown:
            raise UserError(
                f"policy names groups {unknown} that this model does not have; "
                f"its prunable groups are: {', '.join(by_id)}"
            )
        resolved: dict[str, GroupChoice] = {}
        for group in self.groups:
            choice = policy.groups.get(group.id, GroupChoice(method="l1", keep=1.0))
            if choice.channels is not None and choice.channels != group.channels:
                raise UserError(
                    f"policy group {group.id!r} was made for {choice.channels} channels; "
                    f"this model has {group.channels}"
                )
            if choice.method == UNSTRUCTURED:
                resolved[group.id] = GroupChoice(UNSTRUCTURED, choice.keep, group.channels, group.channels)
                continue
            kept = len(choice.kept_indices) if choice.kept_indices is not None else self.kept(group, choice.keep)
            idx = choice.kept_indices
            if idx is None and indices:
                idx = tuple(self.scores.keep_indices(group.id, choice.method, kept, group.channel_groups))
            if idx is not None and idx and idx[-1] >= group.channels:
                raise UserError(f"policy group {group.id!r}: kept index {idx[-1]} >= {group.channels} channels")
            resolved[group.id] = GroupChoice(choice.method, choice.keep, group.channels, kept, idx)
        return policy.with_groups(resolved)

    def kept_outputs(self, resolved: Policy) -> dict[str, list[int]]:
        """For every conv / linear layer whose output channels ``resolved`` removes: which of the
        dense layer's output channels the pruned layer keeps, in order (layers left whole are
        missing). Read from Torch-Pruning's groups on the dense graph; nothing is pruned."""
        if self._dense_graph is None:
            self._dense_graph = build_graph(self.dense, self.example_input)
        graph = self._dense_graph
        modules = dict(self.dense.named_modules())
        names = {m: n for n, m in modules.items()}
        kept: dict[str, list[int]] = {}
        for gid, choice in resolved.groups.items():
            if choice.method == UNSTRUCTURED or choice.kept == choice.channels or choice.kept_indices is None:
                continue
            keep = set(choice.kept_indices)
            remove = [i for i in range(choice.channels or 0) if i not in keep]
            for dep, idxs in pruning_group(graph, modules[gid], remove):
                layer = dep.target.module
                if isinstance(layer, ROOT_TYPES) and graph.is_out_channel_pruning_fn(dep.handler):
                    gone = {getattr(i, "idx", i) for i in idxs}
                    out = layer.weight.shape[0]
                    kept[names[layer]] = [i for i in range(out) if i not in gone]
        return kept

    def apply(self, policy: Policy) -> tuple[nn.Module, Policy]:
        """A pruned deep copy of the dense model, and the resolved policy that made it."""
        resolved = self.resolve(policy)
        model = copy.deepcopy(self.dense)
        graph = build_graph(model, self.example_input)
        modules = dict(model.named_modules())
        by_id = {g.id: g for g in self.groups}
        for gid, choice in resolved.groups.items():
            if choice.method == UNSTRUCTURED or choice.kept == choice.channels:
                continue
            keep = set(choice.kept_indices or ())  # resolve() filled them in
            remove = [i for i in range(by_id[gid].channels) if i not in keep]
            pruning_group(graph, modules[gid], remove).prune()
        for gid, choice in resolved.groups.items():
            if choice.method == UNSTRUCTURED and choice.keep < 1:
                apply_unstructured([modules[n] for n in by_id[gid].members], choice.keep)
        return model, resolved


def apply_policy(
    model: nn.Module,
    policy: Policy,
    *,
    example_input: torch.Tensor,
    ignored: Sequence[str] | None = None,
    calibration: Calibration | None = None,
    seed: int = 0,
    round_to: int | None = None,
    min_channels: int | None = None,
) -> tuple[nn.Module, Policy]:
    """Prune a copy of ``model`` with ``policy``; the input model is left untouched.

    A policy stored by a search trial (``trial.user_attrs["policy"]``) or exported by ``apply``
    holds the kept channel indices and, in its ``meta``, the layers the search kept whole and
    its rounding: replaying it gives exactly the network the trial measured, with no
    calibration data. For a policy of keep ratios only, ``ignored`` defaults to the stem and
    the classifier output, ``round_to`` / ``min_channels`` to the search defaults (1 / 4), and
    data-dependent methods (taylor, activation) need ``calibration``."""
    from autoprune.groups import resolve_ignore

    meta = policy.meta
    if ignored is None:
        ignored = list(meta["ignored"]) if "ignored" in meta else resolve_ignore(model, [])
    pruner = Pruner(
        model, example_input, ignored=list(ignored), calibration=calibration, seed=seed,
        round_to=round_to if round_to is not None else int(meta.get("round_to", 1)),
        min_channels=min_channels if min_channels is not None else int(meta.get("min_channels", 4)),
    )
    return pruner.apply(policy)
