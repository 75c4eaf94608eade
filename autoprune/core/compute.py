"""Compute, counted in FLOPs of the networks that ran.

Convention (fvcore's, as every FLOPs figure here): one fused multiply-add is one flop, counted
for one image at the task's input shape. A forward pass of ``n`` images costs ``n x F`` where
``F`` is that network's per-image count. A pass that runs with gradients enabled is charged as a
training pass, forward + backward = ``3 x n x F`` (backward = 2 x forward); a pass under
``torch.no_grad()`` (evaluation, BatchNorm recalibration, a distillation teacher, activation
statistics) as ``n x F``. Nothing here knows where a pass came from: a :class:`Ledger` watches the
networks it is given (by a global forward pre-hook that looks each module up) for as long as
the caller says.

Users see one unit: the *dense epoch*, one pass of the train split through the dense model,
forward and backward: ``3 x dense FLOPs x train images``."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: what a study's ``units`` say about compute
COMPUTE_CONVENTION = ("FLOPs of the networks that ran (fvcore per image x images); a pass with gradients enabled "
                      "counts 3x (forward + backward), one without 1x; dense epoch = 3 x dense FLOPs x train images")


def dense_epoch_flops(dense_flops: int, train_images: int) -> int:
    """FLOPs of one dense epoch: every train image forward and backward through the dense model."""
    return 3 * int(dense_flops) * int(train_images)


class Ledger:
    """FLOPs charged per kind of pass: ``train`` / ``forward`` for the network being recovered,
    ``dense_train`` / ``dense_forward`` for the dense model (importance scoring, distillation)."""

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}
        #: id(module) -> (a weak reference to it, kind prefix, FLOPs per image); the reference
        #: tells a freed module's id, reused by another, from the module itself
        self._watched: dict[int, tuple[weakref.ref, str, int]] = {}
        self._handle: Any = None

    def charge(self, kind: str, flops: int) -> None:
        self.flops[kind] = self.flops.get(kind, 0) + int(flops)

    @property
    def total(self) -> int:
        return sum(self.flops.values())

    def watch(self, model: nn.Module, flops_per_image: int, *, dense: bool = False) -> None:
        """Charge every forward pass of ``model`` from now until :meth:`close` (once per pass,
        however often it is asked; the last call sets its FLOPs). The hook is global and looks the module up, rather than a
        hook on ``model``: a hook on the module would travel into its deep copies (the pruned
        networks) and charge their passes as this one's."""
        self._watched[id(model)] = (weakref.ref(model), "dense_" if dense else "", int(flops_per_image))
        if self._handle is None:
            self._handle = nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        entry = self._watched.get(id(module))
        x = args[0] if args else None
        if entry is None or entry[0]() is not module or not isinstance(x, torch.Tensor) or x.dim() == 0:
            return
        _, prefix, per_image = entry
        grad = torch.is_grad_enabled()
        self.charge(prefix + ("train" if grad else "forward"), (3 if grad else 1) * x.shape[0] * per_image)

    def close(self) -> None:
        """Stop watching every network (the counts stay)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._watched.clear()

    @contextmanager
    def watching(self, model: nn.Module, flops_per_image: int, *, dense: bool = False) -> Iterator[Ledger]:
        """:meth:`watch` for the duration of a ``with`` block, then :meth:`close`."""
        self.watch(model, flops_per_image, dense=dense)
        try:
            yield self
        finally:
            self.close()

    def record(self, epoch_flops: int) -> dict[str, Any]:
        """What a trial or a study stores: FLOPs per kind, the total, and the total in dense epochs."""
        return {"flops": dict(sorted(self.flops.items())), "total_flops": self.total,
                "dense_epochs": round(self.total / epoch_flops, 6) if epoch_flops else None}
