"""Apply a policy to a copy of a dense model: remove channels structurally (Torch-Pruning
does the surgery on every coupled layer) and, per group, optional unstructured sparsity."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.core.groups import (
    ROOT_TYPES,
    Group,
    build_graph,
    find_groups,
    pruning_group,
    release,
)
from autoprune.core.importance import UNSTRUCTURED, Calibration, ScoreCache
from autoprune.core.measure.costmodel import FlopsPredictor
from autoprune.core.policy import GroupChoice, Policy
from autoprune.errors import UserError


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
        check: bool = True,
    ) -> None:
        if round_to < 1 or min_channels < 1:
            raise UserError(f"round_to ({round_to}) and min_channels ({min_channels}) must be >= 1")
        self.dense = dense
        self.example_input = example_input
        self.ignored = list(ignored)
        self.round_to = round_to
        self.min_channels = min_channels
        self._dense_graph = build_graph(dense, example_input)
        self.groups: list[Group] = find_groups(dense, example_input, ignored=self.ignored, graph=self._dense_graph)
        self.scores = ScoreCache(dense, example_input, self.ignored, calibration=calibration, seed=seed,
                                 graph=self._dense_graph)
        self._predictor: FlopsPredictor | None = None
        #: groups that prune without error but break the forward pass (e.g. a torch.split with
        #: fixed sizes downstream): kept whole, never sampled; {group id: why}
        self.excluded: dict[str, str] = {}
        if check:  # (a pruner built on an already pruned model, whose groups were checked, skips it)
            self.excluded = self._unprunable()
        self.groups = [g for g in self.groups if g.id not in self.excluded]
        if not self.groups:
            why = "; ".join(f"{k}: {v}" for k, v in self.excluded.items())
            raise UserError("the model has no prunable channel groups (everything is ignored or coupled to the "
                            f"stem/head{'; ' + why if why else ''})")

    def _unprunable(self) -> dict[str, str]:
        """Prune every group by half at once and run the network; if that fails, each group
        alone, to find the ones that break it. Costs one pruned forward pass when all is well."""

        def breaks(groups: list[Group]) -> str | None:
            policy = Policy({g.id: GroupChoice("l1", 0.5) for g in groups})
            try:
                model, _ = self.apply(policy)
                with torch.no_grad():
                    model.eval()(self.example_input)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the pruned network
                text = str(exc).strip().splitlines()
                return f"pruning it breaks the forward pass ({type(exc).__name__}: {text[0][:160] if text else ''})"
            return None

        if not self.groups or breaks(self.groups) is None:
            return {}
        found = {g.id: why for g in self.groups if (why := breaks([g])) is not None}
        return found

    def settings(self) -> dict[str, object]:
        """What, besides a policy's kept indices, decides the network it gives: stored in the
        policy's ``meta`` so that :func:`apply_policy` replays it exactly."""
        return {"ignored": list(self.ignored), "round_to": self.round_to, "min_channels": self.min_channels}

    def predict_flops(self, policy: Policy) -> float:
        """FLOPs of ``policy`` predicted from its channel counts, nothing pruned (see costmodel);
        the predictor is built once, on first use."""
        if self._predictor is None:
            self._predictor = FlopsPredictor(self.dense, self.example_input, ignored=self.ignored,
                                             graph=self._dense_graph)
        self._check_known(policy)
        kept: dict[str, int | list[int]] = {}
        for group in self.groups:
            choice = policy.groups.get(group.id)
            if choice is None or choice.method == UNSTRUCTURED:
                continue
            if choice.kept_indices is not None:
                kept[group.id] = len(choice.kept_indices)
            elif group.channel_groups > 1 or not group.segments:
                kept[group.id] = self.kept(group, choice.keep)
            else:
                kept[group.id] = self.segment_counts(group, choice.keep)
        return self._predictor.predict(kept)

    def segment_counts(self, group: Group, keep: float) -> list[int]:
        """Channels kept of each segment of ``group`` at ratio ``keep``: every producer of a
        concatenation and every chunk keeps its share, rounded to ``round_to`` and never below
        ``min_channels`` (or all, if it has fewer). With channel groups, one count: a multiple
        of them."""
        g = group.channel_groups
        if g > 1:
            per_slice = kept_channels(group.channels // g, keep, round_to=max(1, self.round_to // g),
                                      min_channels=-(-self.min_channels // g))
            return [per_slice * g]
        return [kept_channels(n, keep, round_to=self.round_to, min_channels=self.min_channels)
                for n in group.segment_sizes()]

    def kept(self, group: Group, keep: float) -> int:
        """Channels kept of ``group`` at ratio ``keep`` (the sum over its segments)."""
        return sum(self.segment_counts(group, keep))

    def _check_known(self, policy: Policy) -> None:
        known = [g.id for g in self.groups]
        unknown = sorted(set(policy.groups) - set(known))
        if unknown:
            excluded = [u for u in unknown if u in self.excluded]
            raise UserError(
                f"policy names groups {unknown} that this model does not have"
                + (f" ({', '.join(excluded)}: kept whole, {self.excluded[excluded[0]]})" if excluded else "")
                + f"; its prunable groups are: {', '.join(known)}"
            )

    def resolve(self, policy: Policy, *, indices: bool = True) -> Policy:
        """Fill in channel counts (and, with ``indices``, the kept channel indices) of every
        group; groups missing from the policy stay whole."""
        self._check_known(policy)
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
            idx = choice.kept_indices
            if choice.kept is not None and choice.kept > group.channels:
                raise UserError(f"policy group {group.id!r}: kept {choice.kept} is more than its {group.channels} "
                                "channels")
            if idx is not None:
                kept = len(idx)
            else:
                counts = self.segment_counts(group, choice.keep)
                kept = sum(counts)
                if choice.kept is not None and choice.kept != kept:
                    raise UserError(
                        f"policy group {group.id!r}: kept {choice.kept} does not match keep {choice.keep:g}, which "
                        f"keeps {kept} of {group.channels} channels here; edit keep (kept is derived from it), "
                        "or remove kept")
                if indices:
                    idx = tuple(self.scores.keep_indices(group, choice.method, counts))
            if idx is not None and idx and idx[-1] >= group.channels:
                raise UserError(f"policy group {group.id!r}: kept index {idx[-1]} >= {group.channels} channels")
            resolved[group.id] = GroupChoice(choice.method, choice.keep, group.channels, kept, idx)
        return policy.with_groups(resolved)

    def kept_outputs(self, resolved: Policy) -> dict[str, list[int]]:
        """For every conv / linear layer whose output channels ``resolved`` removes: which of the
        dense layer's output channels the pruned layer keeps, in order (layers left whole are
        missing). Read from Torch-Pruning's groups on the dense graph; nothing is pruned."""
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
        release(graph)  # the copy is freed as soon as the caller drops it
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
    from autoprune.core.groups import resolve_ignore

    meta = policy.meta
    if ignored is None:
        ignored = list(meta["ignored"]) if "ignored" in meta else resolve_ignore(model, example_input)
    pruner = Pruner(
        model, example_input, ignored=list(ignored), calibration=calibration, seed=seed,
        round_to=round_to if round_to is not None else int(meta.get("round_to", 1)),
        min_channels=min_channels if min_channels is not None else int(meta.get("min_channels", 4)),
    )
    return pruner.apply(policy)
