"""Python API for users who hold their own model and data in code; mirrors the CLI."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any

import optuna
import torch
from torch import nn

from autoprune.core.batches import LazySplit, Split, TensorSplit, ToFloat
from autoprune.core.device import Runtime, resolve_device
from autoprune.errors import UserError
from autoprune.policy_search.plan import plan
from autoprune.policy_search.run import search_model
from autoprune.task.config import DEFAULT_METHODS, SearchConfig
from autoprune.task.sources import labels_of


def _split(data: Any, name: str) -> Split:
    """``(inputs, labels)`` tensors are held in memory; any other dataset of ``(input, label)``
    pairs is read per batch."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.dim() < 2 or len(x) != len(y):
            raise UserError(f"{name} must be (inputs, labels) with one label per input; got {tuple(x.shape)}, "
                            f"{tuple(y.shape)}")
        return TensorSplit(x.float(), y.long())
    labels = labels_of(data, name)
    return LazySplit(data, torch.arange(len(labels)), labels, ToFloat(None, None, None), name=name)


def _state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def search(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    example_input: torch.Tensor,
    *,
    budget_flops: float | str = 0.5,
    storage: str = "sqlite:///autoprune.db",
    study: str = "autoprune",
    trials: int = 20,
    timeout: float | None = None,
    sampler: str = "tpe",
    methods: Sequence[str] = DEFAULT_METHODS,
    keep_min: float = 0.25,
    keep_step: float = 0.125,
    finetune_steps: int = 150,
    ignore: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> optuna.Study:
    """Search pruning policies for a trained ``model`` and return the Optuna study.

    ``train_data`` / ``val_data``: ``(inputs, labels)`` tensors (held in memory) or any dataset
    of ``(input tensor, label)`` pairs (read per batch). ``model`` stays on the CPU; trials
    train on ``device`` (option; default CUDA when available). ``example_input``: one batch of the
    model's input shape (FLOPs are counted at batch 1). ``budget_flops``: a fraction of the
    dense FLOPs (0.5) or an absolute count ("150M"). Further ``options`` are the fields of
    :class:`autoprune.config.SearchConfig` (e.g. ``round_to``, ``distill``, ``batch_size``).
    Re-running with the same ``storage`` and ``study`` resumes it.
    """
    if options.get("compute") is not None:
        raise UserError(f"compute={options['compute']!r}: a compute budget ships a model rebuilt from a checkpoint file; "
                        "save the model's state dict and run: autoprune search --checkpoint FILE --compute E ...")
    config = SearchConfig.from_dict(
        {
            "model": f"<python object {type(model).__name__}>",
            "dataset": "<python data>",
            "budget_flops": str(budget_flops),
            "storage": storage,
            "study": study,
            "trials": trials,
            "timeout": timeout,
            "sampler": sampler,
            "methods": list(methods),
            "keep_min": keep_min,
            "keep_step": keep_step,
            "finetune_steps": finetune_steps,
            "ignore": list(ignore),
            "seed": seed,
            **options,
        },
        source="autoprune.search",
    )
    train = _split(train_data, "train_data")
    val = _split(val_data, "val_data")
    if any(t.device.type != "cpu" for t in model.parameters()):
        model = copy.deepcopy(model).cpu()  # trials prune on the CPU; the caller's model is not moved
    model.eval()
    example = example_input[:1].detach().cpu()
    runtime = Runtime(device=resolve_device(config.device), amp=config.amp,
                      workers=config.loader_workers if isinstance(train, LazySplit) else 0)
    the_plan = plan(model, example, config, device=runtime.device)
    result, _ = search_model(
        dense=model, train=train, val=val, example_input=example, config=config, the_plan=the_plan,
        dense_info={"checkpoint": None, "sha256": _state_sha256(model)}, progress=progress, runtime=runtime,
    )
    return result
