"""A stored search, rebuilt to work on: its config, its task, its verified dense model and a
pruner with the search's settings; and the recovery ``apply`` and ``confirm`` give a policy
(prune the dense model, recalibrate BatchNorm, fine-tune).

Takes the study's ``autoprune`` attribute (a dict), not the study: nothing here knows Optuna."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.baseline import skeleton
from autoprune.config import SearchConfig
from autoprune.data import Task
from autoprune.device import Runtime
from autoprune.errors import UserError
from autoprune.policy import Policy
from autoprune.prune import Pruner
from autoprune.task import calibration_of, load_config_task
from autoprune.train import file_sha256, load_weights, recover_model


def load_dense(info: dict[str, Any], config: SearchConfig, task: Task) -> nn.Module:
    """The study's dense model, from the checkpoint it was searched on (refused if it changed)."""
    path = Path(info["dense"]["checkpoint"])
    if not path.is_file():
        raise UserError(f"the study's dense checkpoint {path} is missing (re-run the search on this machine, or copy it there)")
    if file_sha256(path) != info["dense"]["sha256"]:
        raise UserError(f"dense checkpoint {path} changed since the search (sha256 differs); refusing to use it")
    model = skeleton(config, task)
    load_weights(model, path)
    return model.eval()


def prepare(info: dict[str, Any], *, study_name: str, data_root: str | None = None, device: str | None = None
            ) -> tuple[SearchConfig, Task, nn.Module, Pruner]:
    """The stored config, the task, the verified dense model and a pruner for them, with the
    search's calibration images (so taylor / activation rank channels as they did). ``device``
    overrides the stored one: a study searched on a GPU is applied on a CPU, and the reverse."""
    if info["dense"].get("checkpoint") is None:
        raise UserError(
            f"study {study_name!r} was searched on an in-memory model through the Python API; apply its "
            "policies in Python: autoprune.apply_policy(model, autoprune.Policy.from_dict(trial.user_attrs['policy']), ...)"
        )
    config = SearchConfig.from_dict(info["config"], source="stored study config")
    if data_root:
        config.data_root = data_root
    if device:
        config.device = device
    task = load_config_task(config)
    dense = load_dense(info, config, task)
    pruner = Pruner(
        dense, task.example_input(), ignored=info["ignored"],
        calibration=calibration_of(config, task.plain_train),
        seed=config.seed, round_to=config.round_to, min_channels=config.min_channels,
    )
    return config, task, dense, pruner


def recover(
    pruner: Pruner, policy: Policy, task: Task, config: SearchConfig, *, steps: int, progress: bool = False,
    desc: str = "fine-tune", runtime: Runtime | None = None,
) -> tuple[nn.Module, Policy]:
    """Prune the dense model with ``policy``, recalibrate BatchNorm and fine-tune ``steps``
    mini-batches (distilled from the dense model if the policy says so), on the runtime's
    device, where the model is returned, in eval mode."""
    rt = runtime if runtime is not None else Runtime()
    model, resolved = pruner.apply(policy)
    model.to(rt.device)
    teacher = None
    if resolved.distill:
        teacher = pruner.dense if rt.device.type == "cpu" else copy.deepcopy(pruner.dense).to(rt.device)
    recover_model(model, task.train, steps=steps, seed=config.seed, bn_batches=config.bn_batches,
                  batch_size=config.batch_size, lr=config.finetune_lr, teacher=teacher, progress=progress,
                  desc=desc, bn_data=task.plain_train, amp=rt.amp, workers=rt.workers)
    return model.eval(), resolved
