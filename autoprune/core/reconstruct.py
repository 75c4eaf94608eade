"""Layer-wise least-squares reconstruction of a pruned network.

Removing channels leaves every later layer reading fewer inputs than it was trained on. Here
each conv / linear layer of the pruned network gets the weights that best reproduce, in least
squares, what the same layer of the DENSE network outputs on a few calibration images, given
the inputs it now really receives (He et al. 2017, "Channel Pruning for Accelerating Very Deep
Neural Networks"; Luo et al. 2017, ThiNet). Layers are solved in forward order within one
forward pass, so each one also absorbs the error left by the layers before it.

It costs one dense and one pruned forward pass over the calibration images plus one small
ridge solve per layer, and gives fine-tuning a far better starting point (see the README's
benchmark for what it is worth after recovery).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerFit:
    """Relative squared error of a layer's output against the dense one, before and after."""

    name: str
    rows: int
    error_before: float
    error_after: float


def _solvable(layer: nn.Module) -> bool:
    if getattr(layer, "_autoprune_mask", None) is not None:
        return False  # unstructured zeros would be filled in
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def _rows(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as a (rows, features) matrix: im2col patches at ``positions`` for a conv."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    assert positions is not None
    chunks = []
    for start in range(0, len(x), 64):  # unfold a few images at a time: patches are k*k times larger
        cols = F.unfold(x[start : start + 64], layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        pos = positions[start : start + 64]
        cols = torch.gather(cols, 2, pos.unsqueeze(1).expand(-1, cols.shape[1], -1))
        chunks.append(cols.permute(0, 2, 1).reshape(-1, cols.shape[1]))
    return torch.cat(chunks)


def _targets(layer: nn.Module, y: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The dense layer's output as a (rows, channels) matrix, at the same positions."""
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1]).clone()  # a later in-place op must not change it
    assert positions is not None
    y = y.flatten(2)
    y = torch.gather(y, 2, positions.unsqueeze(1).expand(-1, y.shape[1], -1))
    return y.permute(0, 2, 1).reshape(-1, y.shape[1])


@dataclass
class DenseTargets:
    """What every conv / linear layer of the dense model outputs on the calibration images,
    at a fixed sample of positions per image (convs); computed once, shared by all trials.
    Memory: images x positions_per_image x (sum of output channels) floats."""

    x: torch.Tensor
    outputs: dict[str, torch.Tensor]  # name -> (rows, channels)
    positions: dict[str, torch.Tensor | None]  # name -> (images, positions) indices into H*W


@torch.no_grad()
def dense_targets(dense: nn.Module, x: torch.Tensor, *, positions_per_image: int = 16, seed: int = 0) -> DenseTargets:
    """One eval-mode forward pass of ``dense`` over ``x``, recording every solvable layer's output."""
    gen = torch.Generator().manual_seed(seed)
    outputs: dict[str, torch.Tensor] = {}
    positions: dict[str, torch.Tensor | None] = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            pos = None
            if isinstance(module, nn.Conv2d):
                spatial = out.shape[2] * out.shape[3]
                k = min(positions_per_image, spatial)
                pos = torch.argsort(torch.rand(out.shape[0], spatial, generator=gen), dim=1)[:, :k]
            positions[name] = pos
            outputs[name] = _targets(module, out, pos)
        return hook

    handles = [m.register_forward_hook(capture(n)) for n, m in dense.named_modules() if _solvable(m)]
    was = dense.training
    try:
        dense.eval()
        dense(x)
    finally:
        for h in handles:
            h.remove()
        dense.train(was)
    return DenseTargets(x, outputs, positions)


@torch.no_grad()
def reconstruct(
    pruned: nn.Module,
    dense: nn.Module | DenseTargets,
    kept_out: Mapping[str, Sequence[int]],
    x: torch.Tensor | None = None,
    *,
    positions_per_image: int = 16,
    ridge: float = 1e-3,
    seed: int = 0,
) -> list[LayerFit]:
    """Refit, in place, every conv (not grouped) and linear layer of ``pruned`` to the outputs
    of the layer of the same name in the dense model on images ``x``.

    ``dense`` is the dense model (its outputs on ``x`` are recorded first) or the
    :class:`DenseTargets` recorded already. ``kept_out[name]`` lists which of the dense
    layer's output channels the pruned layer kept (all of them where a name is missing).
    ``ridge`` is relative to the mean diagonal of the Gram matrix. The pruned model runs in
    eval mode, so BatchNorm uses the dense statistics the targets were made with; a layer is
    left as it was where the fit would not lower its error on the calibration rows.
    """
    if isinstance(dense, nn.Module):
        if x is None:
            raise ValueError("reconstruct needs the calibration images x with a dense model")
        dense = dense_targets(dense, x, positions_per_image=positions_per_image, seed=seed)
    targets = dense
    fits: list[LayerFit] = []

    def refit(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            full = targets.outputs[name]
            keep = kept_out.get(name)
            target = (full if keep is None else full[:, list(keep)]).double()
            if target.shape[1] != module.weight.shape[0]:
                return  # the channel map does not fit this layer: leave it
            inp = _rows(module, args[0], targets.positions[name]).double()
            has_bias = module.bias is not None
            design = torch.cat([inp, torch.ones(len(inp), 1, dtype=inp.dtype)], 1) if has_bias else inp
            w_old = module.weight.detach().reshape(module.weight.shape[0], -1).double()
            if has_bias:
                w_old = torch.cat([w_old, module.bias.detach().double()[:, None]], 1)
            gram = design.T @ design
            lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
            w_new = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), design.T @ target).T
            denom = target.pow(2).sum().clamp_min(1e-12)
            before = float((design @ w_old.T - target).pow(2).sum() / denom)
            after = float((design @ w_new.T - target).pow(2).sum() / denom)
            fits.append(LayerFit(name, len(design), before, min(before, after)))
            if after >= before:
                return
            d = module.weight[0].numel()
            module.weight.copy_(w_new[:, :d].reshape(module.weight.shape).to(module.weight.dtype))
            if has_bias:
                module.bias.copy_(w_new[:, d].to(module.bias.dtype))
        return hook

    handles = [m.register_forward_pre_hook(refit(n)) for n, m in pruned.named_modules()
               if n in targets.outputs and _solvable(m)]
    was = pruned.training
    try:
        pruned.eval()
        pruned(targets.x)
    finally:
        for h in handles:
            h.remove()
        pruned.train(was)
    return fits
