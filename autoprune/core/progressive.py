"""Progressive pruning: a policy reached in k rounds of pruning and recovery, channels re-ranked
on the model recovered so far, the recovery steps split between the rounds."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import nn

from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner


def progressive(pruner: Pruner, policy: Policy, k: int, steps: int, train: Any, desc: str,
                device: Any) -> tuple[nn.Module, Policy]:
    """``policy`` reached in ``k`` pruning rounds; ``train(model, n, label)`` recovers the model
    (on ``device``) for ``n`` steps after each (the ``steps`` split evenly). Returns the model
    and the policy with the dense model's kept indices."""
    target = pruner.resolve(policy, indices=False)
    by_id = {g.id: g for g in pruner.groups}
    goal = {gid: pruner.segment_counts(by_id[gid], c.keep) for gid, c in target.groups.items()
            if c.method != "unstructured" and c.kept != c.channels}
    absolute = {gid: list(range(by_id[gid].channels)) for gid in goal}  # dense indices each group still has
    model = copy.deepcopy(pruner.dense).cpu()
    done = 0
    for i in range(1, k + 1):
        step_pruner = Pruner(model.cpu().eval(), pruner.example_input, ignored=pruner.ignored,
                             calibration=pruner.scores._calibration, seed=pruner.scores._seed, round_to=1,
                             min_channels=1, check=False)
        here = {g.id: g for g in step_pruner.groups}
        choices = {}
        for gid, final in goal.items():
            group = here.get(gid)
            if group is None:
                continue
            sizes = [len(s) for s in by_id[gid].segments] or [by_id[gid].channels]
            counts = [f if i == k else max(f, round(n * (f / n) ** (i / k))) for n, f in zip(sizes, final, strict=True)]
            if by_id[gid].channel_groups > 1 or len(group.segment_sizes()) != len(counts):
                counts, group = [sum(counts)], dataclasses.replace(group, segments=())
            idx = step_pruner.scores.keep_indices(group, policy.groups[gid].method, counts)
            absolute[gid] = [absolute[gid][j] for j in idx]
            choices[gid] = GroupChoice(policy.groups[gid].method, policy.groups[gid].keep, kept_indices=tuple(idx))
        if i == k:  # unstructured sparsity, if any, on the final architecture
            choices.update({gid: c for gid, c in policy.groups.items() if c.method == "unstructured" and gid in here})
        model, _ = step_pruner.apply(Policy(choices, distill=policy.distill))
        n = steps * i // k - done
        done += n
        train(model.to(device), n, f"{desc} (pruning step {i}/{k})")
    resolved = {}
    for gid, c in target.groups.items():
        kept = absolute.get(gid, list(range(c.channels or 0)))
        resolved[gid] = c if c.method == "unstructured" else GroupChoice(c.method, c.keep, c.channels, len(kept), tuple(kept))
    return model.eval(), policy.with_groups(resolved)
