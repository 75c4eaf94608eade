"""A stored search, rebuilt to work on: its config, its task, its verified dense model and a
pruner with the search's settings; and the recovery ``apply`` and ``confirm`` give a policy
(prune the dense model, recalibrate BatchNorm, fine-tune).

Takes the study's ``autoprune`` attribute (a dict), not the study: nothing here knows Optuna."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.core.checkpoints import file_sha256, load_weights
from autoprune.core.compute import Ledger
from autoprune.core.device import Runtime
from autoprune.core.loops import model_device, recover_model
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import Policy
from autoprune.core.progressive import progressive
from autoprune.core.prune import Pruner
from autoprune.errors import UserError
from autoprune.task.baseline import skeleton
from autoprune.task.config import SearchConfig
from autoprune.task.setup import calibration_of, load_config_task
from autoprune.task.splits import Task


def load_dense(info: dict[str, Any], config: SearchConfig, task: Task, path: Path) -> nn.Module:
    """The study's dense model, from ``path``: a copy of the checkpoint it was searched on,
    verified by sha256 (see :func:`autoprune.artifacts.dense_checkpoint`)."""
    if file_sha256(path) != info["dense"]["sha256"]:
        raise UserError(f"dense checkpoint {path} changed since the search (sha256 differs); refusing to use it")
    model = skeleton(config, task)
    load_weights(model, path)
    return model.eval()


def dense_file(info: dict[str, Any], checkpoint: str | None, artifact_dir: str | None, progress: bool
               ) -> Path | None:
    """A local copy of the study's dense checkpoint (None for a study of an in-memory model)."""
    if info["dense"].get("sha256") is None or (info["dense"].get("checkpoint") is None and not checkpoint):
        return None
    from autoprune.store.artifacts import dense_checkpoint

    return dense_checkpoint(info["dense"], checkpoint=checkpoint, artifact_dir=artifact_dir,
                            cache_dir=info["config"].get("cache_dir", "studies/checkpoints"))


def prepare(info: dict[str, Any], *, study_name: str, checkpoint: Path | None, data_root: str | None = None,
            device: str | None = None) -> tuple[SearchConfig, Task, nn.Module, Pruner]:
    """The stored config, the task, the verified dense model (from ``checkpoint``, a local
    copy of the study's) and a pruner for them, with the search's calibration images (so
    taylor / activation rank channels as they did). ``device`` overrides the stored one: a
    study searched on a GPU is applied on a CPU, and the reverse."""
    if info["dense"].get("checkpoint") is None or checkpoint is None:
        raise UserError(
            f"study {study_name!r} was searched on an in-memory model through the Python API; apply its "
            "policies in Python: autoprune.apply_policy(model, autoprune.Policy.from_dict(trial.user_attrs['policy']), ...)"
        )
    config = SearchConfig.from_stored(info["config"], source="stored study config")
    if data_root:
        config.data_root = data_root
    if device:
        config.device = device
    task = load_config_task(config)
    dense = load_dense(info, config, task, checkpoint)
    pruner = Pruner(
        dense, task.example_input(), ignored=info["ignored"],
        calibration=calibration_of(config, task.plain_train),
        seed=config.seed, round_to=config.round_to, min_channels=config.min_channels,
    )
    return config, task, dense, pruner


def recover(
    pruner: Pruner, policy: Policy, task: Task, config: SearchConfig, *, steps: int, progress: bool = False,
    desc: str = "fine-tune", runtime: Runtime | None = None, prune_steps: int = 1, ledger: Ledger | None = None,
) -> tuple[nn.Module, Policy]:
    """Prune the dense model with ``policy``, recalibrate BatchNorm and fine-tune ``steps``
    mini-batches (distilled from the dense model if the policy says so), on the runtime's
    device, where the model is returned, in eval mode.

    With ``prune_steps`` k > 1 the policy is reached progressively: k rounds of pruning part
    of the way (per group, channel counts on the geometric path from dense to the policy's),
    re-ranking channels on the model as fine-tuned so far, each followed by BN recalibration
    and ``steps / k`` fine-tune steps (the same total). The returned policy holds the kept
    indices of the dense model, so ``policy.json`` + the weights rebuild it as usual. A ``ledger``
    is charged every pass of the networks recovered (and of the teacher), and keeps watching the
    returned model until the caller closes it."""
    rt = runtime if runtime is not None else Runtime()
    teacher = None
    if policy.distill:
        teacher = pruner.dense if rt.device.type == "cpu" else copy.deepcopy(pruner.dense).to(rt.device)
        if ledger is not None:
            ledger.watch(teacher, count_flops(pruner.dense, pruner.example_input), dense=True)

    def train(model: nn.Module, n: int, label: str) -> None:
        if ledger is not None:  # each round's network, at its own FLOPs
            ledger.watch(model, count_flops(model, pruner.example_input.to(model_device(model))))
        recover_model(model, task.train, steps=n, seed=config.seed, bn_batches=config.bn_batches,
                      batch_size=config.batch_size, lr=config.finetune_lr, teacher=teacher, progress=progress,
                      desc=label, bn_data=task.plain_train, amp=rt.amp, workers=rt.workers)

    if prune_steps <= 1:
        model, resolved = pruner.apply(policy)
        train(model.to(rt.device), steps, desc)
        return model.eval(), resolved
    return progressive(pruner, policy, prune_steps, steps, train, desc, rt.device)


