"""Prunable units: Torch-Pruning's dependency groups of coupled channels.

A group is every layer whose channels must be removed together (a conv, its BatchNorm, the
convs that read it, all members of a residual sum, a depthwise conv, concatenation slices).
One keep ratio per group: Torch-Pruning itself lets the first member's ratio silently win.

Within a group, channels fall into *segments*: root channels that the same layers touch. A
concatenation of two producers gives one segment per producer, a ``torch.chunk`` one per
chunk. Each segment is pruned on its own (rounded, never below ``min_channels``), so no
producer loses all of its channels and chunks stay equal.

Failures inside Torch-Pruning (a model it cannot trace, a layer whose group it cannot build,
an index search that explodes) become one :class:`UserError` naming the layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError

ROOT_TYPES = (nn.Conv2d, nn.Linear)
#: a group search of Torch-Pruning that maps more channel indices than this, summed over its
#: steps, has run away (window-attention reshapes multiply them: swin_t took 9 GB and 97 s
#: before a MemoryError, maxvit_t over 13 GB); about 0.7 GB of Python objects
MAX_MAPPED_INDICES = 10_000_000


@dataclass(frozen=True)
class Group:
    """One prunable unit. ``id`` is the module name of its root layer."""

    id: str
    channels: int
    members: tuple[str, ...]  # layers whose output channels are removed with the root's
    channel_groups: int = 1  # grouped convs / GroupNorm: remove the same positions in each of these
    #: root channel indices per segment (see the module docstring); one segment = all channels
    segments: tuple[tuple[int, ...], ...] = ()

    def segment_sizes(self) -> list[int]:
        return [len(s) for s in self.segments] if self.segments else [self.channels]


class _IndexSearchTooLarge(Exception):
    pass


def _guarded(mapping: Callable, mapped_so_far: list[int]) -> Callable:
    def mapped(idxs):  # noqa: ANN001, ANN202 (Torch-Pruning's _HybridIndex lists)
        if getattr(mapping, "reverse", True) is False and hasattr(mapping, "_stride"):
            # a flatten mapping multiplies the indices by its stride: refuse before building the list
            if mapped_so_far[0] + len(idxs) * mapping._stride > MAX_MAPPED_INDICES:
                raise _IndexSearchTooLarge(mapped_so_far[0] + len(idxs) * mapping._stride)
        out = mapping(idxs)
        mapped_so_far[0] += len(out)
        if mapped_so_far[0] > MAX_MAPPED_INDICES:
            raise _IndexSearchTooLarge(mapped_so_far[0])
        return out

    return mapped


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once in eval mode (so BatchNorm statistics are not touched). A model
    Torch-Pruning cannot trace is a :class:`UserError`."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except UserError:
        raise
    except RuntimeError as exc:
        if "size is too small" in str(exc) or "Kernel size can't be greater" in str(exc):
            raise UserError(
                f"the input {tuple(example_input.shape[1:])} is too small for {type(model).__name__}: its forward "
                f"pass fails ({_first_line(exc)}); use larger images (--image-size) or a model for small inputs"
            ) from None
        raise _trace_error(model, exc) from None
    except Exception as exc:  # noqa: BLE001 - anything Torch-Pruning raises while tracing
        raise _trace_error(model, exc) from None
    finally:
        model.train(was_training)
    graph._autoprune_mapped = [0]  # indices mapped by the current group search; iter_tp_groups resets it
    for node in graph.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = _GuardedMappings(dep.index_mapping, graph._autoprune_mapped)
    return graph


class _GuardedMappings(list):
    """A dependency's index mappings, each counted against :data:`MAX_MAPPED_INDICES`; Torch-Pruning
    assigns fresh mappings before every group search (``dep.index_mapping[0] = ...``), and
    those are guarded as they come in."""

    def __init__(self, mappings: list, counter: list[int]) -> None:
        super().__init__(m if m is None else _guarded(m, counter) for m in mappings)
        self._counter = counter

    def __setitem__(self, i, mapping) -> None:  # noqa: ANN001
        super().__setitem__(i, mapping if mapping is None else _guarded(mapping, self._counter))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


#: what in these architectures Torch-Pruning 1.6 cannot follow (a documented limitation of it)
KNOWN_LIMITS = {
    "ShuffleNetV2": "its channel shuffle (a view and a transpose across channels)",
    "SwinTransformer": "its shifted-window attention (rolls and window reshapes)",
    "MaxVit": "its block and grid window attention (window reshapes)",
}


def _trace_error(model: nn.Module, exc: BaseException) -> UserError:
    name = type(model).__name__
    why = KNOWN_LIMITS.get(name)
    return UserError(
        f"Torch-Pruning 1.6 cannot trace {name} ({_first_line(exc)})"
        + (f": {why} is a known limitation of it" if why else "")
        + "; no layer of this model can be pruned"
    )


def _parametric(node: tp.dependency.Node) -> bool:
    return isinstance(node.module, ROOT_TYPES)


def io_layers(model: nn.Module, graph: tp.DependencyGraph) -> tuple[list[str], list[str]]:
    """(stems, heads) read off the traced graph: the conv / linear layers that read the model's
    input (no conv or linear upstream) and those that produce its output (none downstream).
    Definition order says nothing: a model may declare its classifier first."""
    names = {m: n for n, m in model.named_modules()}

    def reaches(start: tp.dependency.Node, step: Callable) -> bool:
        seen, todo = set(), list(step(start))
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if _parametric(node):
                return True
            todo.extend(step(node))
        return False

    stems, heads = [], []
    for module, node in graph.module2node.items():
        if not _parametric(node) or module not in names:
            continue
        if not reaches(node, lambda n: n.inputs):
            stems.append(names[module])
        if not reaches(node, lambda n: n.outputs):
            heads.append(names[module])
    position = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(stems, key=position.get), sorted(heads, key=position.get)


def resolve_ignore(model: nn.Module, example_input: torch.Tensor, patterns: Iterable[str] = (), *,
                   prune_stem: bool = False, graph: tp.DependencyGraph | None = None) -> list[str]:
    """Module names to keep whole: the layers that produce the output always, those that read
    the input unless ``prune_stem``, plus ``patterns`` (fnmatch).

    Pruning the stem's output channels also thins everything coupled to them (in a ResNet,
    the first stage's residual stream)."""
    names = [n for n, _ in model.named_modules() if n]
    own = graph is None
    graph = build_graph(model, example_input) if own else graph
    stems, heads = io_layers(model, graph)
    if own:
        release(graph)
    ignored = set(heads) | (set() if prune_stem else set(stems))
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not matched:
            raise UserError(f"ignore pattern {pattern!r} matches no module of the model")
        ignored.update(matched)
    return sorted(ignored)


def iter_tp_groups(
    model: nn.Module, graph: tp.DependencyGraph, ignored: Sequence[str]
) -> Iterable[tuple[str, nn.Module, tp.dependency.Group]]:
    """(root name, root module, Torch-Pruning group) for every prunable group, in graph order
    (Torch-Pruning's ``get_all_groups``, one root at a time so that a failure names its layer)."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    ignored_modules = {modules[n] for n in ignored} | set(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if module in ignored_modules or not isinstance(module, ROOT_TYPES) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        name = names.get(module, type(module).__name__)
        mapped = getattr(graph, "_autoprune_mapped", [0])
        mapped[0] = 0
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except (_IndexSearchTooLarge, MemoryError):
            why = KNOWN_LIMITS.get(type(model).__name__, "reshapes that multiply channel indices")
            raise UserError(
                f"Torch-Pruning 1.6's dependency search for layer {name!r} of {type(model).__name__} ran away (over "
                f"{MAX_MAPPED_INDICES:,} indices; {why} is a known limitation of it); keep the layer whole with "
                f"--ignore '{name}', or choose another model"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever Torch-Pruning raises for this layer
            raise UserError(
                f"Torch-Pruning cannot build the pruning group of layer {name!r} ({_first_line(exc)}); "
                f"keep it whole with --ignore '{name}'"
            ) from None
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                if dep.target.module in ignored_modules:
                    prunable = False
        if prunable:
            yield name, module, group


def find_groups(model: nn.Module, example_input: torch.Tensor, *, ignored: Sequence[str],
                graph: tp.DependencyGraph | None = None) -> list[Group]:
    """The prunable groups of ``model``; layers named in ``ignored`` are never pruned."""
    graph = graph if graph is not None else build_graph(model, example_input)
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
                                channel_groups=channel_groups(graph, group), segments=segments(group, int(channels))))
    position = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: position[g.id])


def segments(group: tp.dependency.Group, channels: int) -> tuple[tuple[int, ...], ...]:
    """The group's root channels split by which layers touch them: channels that exactly the
    same members of the group read or write form one segment. Empty when that is all of them."""
    signature: dict[int, list[int]] = {i: [] for i in range(channels)}
    for k, item in enumerate(group):
        for r in set(int(i) for i in (item.root_idxs or ())):
            if r in signature:
                signature[r].append(k)
    classes: dict[tuple[int, ...], list[int]] = {}
    for r in range(channels):
        classes.setdefault(tuple(signature[r]), []).append(r)
    if len(classes) <= 1:
        return ()
    return tuple(sorted((tuple(v) for v in classes.values()), key=lambda s: s[0]))


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


def release(graph: tp.DependencyGraph) -> None:
    """Break the reference cycles of a graph that is no longer needed. Its nodes point at one
    another and at the model's modules, so without this a discarded pruned copy (hundreds of
    MB for a large model) lives on until Python's cyclic collector happens to run."""
    for node in graph.module2node.values():
        node.inputs.clear()
        node.outputs.clear()
        node.dependencies.clear()
    graph.module2node.clear()
    graph.model = None


def pruning_group(graph: tp.DependencyGraph, root: nn.Module, idxs: Sequence[int]) -> tp.dependency.Group:
    """The Torch-Pruning group that removes output channels ``idxs`` of ``root``."""
    return graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(idxs))
