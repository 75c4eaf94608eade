"""Prunable units: Torch-Pruning's dependency groups of coupled channels.

A group is every layer whose channels must be removed together (a conv, its BatchNorm, the
convs that read it, all members of a residual sum, a depthwise conv, concatenation slices).
One keep ratio per group: Torch-Pruning itself lets the first member's ratio silently win.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError

ROOT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Group:
    """One prunable unit. ``id`` is the module name of its root layer."""

    id: str
    channels: int
    members: tuple[str, ...]  # layers whose output channels are removed with the root's
    channel_groups: int = 1  # grouped convs / GroupNorm: remove the same positions in each of these


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once in eval mode (so BatchNorm statistics are not touched)."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)


def stem_and_head(model: nn.Module) -> tuple[str | None, str | None]:
    """The input stem (first conv or linear) and the classifier output (last conv or linear)."""
    names = [n for n, m in model.named_modules() if isinstance(m, ROOT_TYPES)]
    return (names[0], names[-1]) if names else (None, None)


def resolve_ignore(model: nn.Module, patterns: Iterable[str], *, prune_stem: bool = False) -> list[str]:
    """Module names to keep whole: the classifier output always, the stem unless
    ``prune_stem``, plus ``patterns`` (fnmatch).

    Pruning the stem's output channels also thins everything coupled to them (in a ResNet,
    the first stage's residual stream)."""
    names = [n for n, _ in model.named_modules() if n]
    stem, head = stem_and_head(model)
    ignored = {n for n in (head, None if prune_stem else stem) if n is not None}
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not matched:
            raise UserError(f"ignore pattern {pattern!r} matches no module of the model")
        ignored.update(matched)
    return sorted(ignored)


def iter_tp_groups(
    model: nn.Module, graph: tp.DependencyGraph, ignored: Sequence[str]
) -> Iterable[tuple[str, nn.Module, tp.dependency.Group]]:
    """(root name, root module, Torch-Pruning group) for every prunable group, in graph order."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    ignored_modules = [modules[n] for n in ignored]
    for group in graph.get_all_groups(ignored_layers=ignored_modules, root_module_types=ROOT_TYPES):
        root = group[0].dep.target.module
        yield names[root], root, group


def find_groups(model: nn.Module, example_input: torch.Tensor, *, ignored: Sequence[str]) -> list[Group]:
    """The prunable groups of ``model``; layers named in ``ignored`` are never pruned."""
    graph = build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for gid, root, group in iter_tp_groups(model, graph, ignored):
        members = []
        for dep, _ in group:
            target = dep.target.module
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(target, ROOT_TYPES):
                members.append(names[target])
        channels = graph.get_out_channels(root)
        if channels and channels > 1:
            groups.append(Group(id=gid, channels=int(channels), members=tuple(dict.fromkeys(members)),
                                channel_groups=channel_groups(graph, group)))
    position = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: position[g.id])


def channel_groups(graph: tp.DependencyGraph, group: tp.dependency.Group) -> int:
    """How many equal slices the group's channels fall into: a grouped conv (not depthwise) or
    a GroupNorm with G groups needs the same positions removed from each of its G slices."""
    found = [1]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups == module.out_channels:
            continue  # depthwise: pruned channel by channel
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            found.append(pruner.get_out_channel_groups(module))
        else:
            found.append(pruner.get_in_channel_groups(module))
    return max(found)


def pruning_group(graph: tp.DependencyGraph, root: nn.Module, idxs: Sequence[int]) -> tp.dependency.Group:
    """The Torch-Pruning group that removes output channels ``idxs`` of ``root``."""
    return graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(idxs))
