"""autoprune: search per-group structured-pruning policies under a FLOPs budget.

Public API::

    study = autoprune.search(model, (x_train, y_train), (x_val, y_val), example_input,
                             budget_flops=0.5, storage="sqlite:///my.db")
    pruned, policy = autoprune.apply_policy(model, policy, example_input=example_input)

Names are imported on first use (PEP 562), so ``import autoprune`` and ``autoprune --help``
load neither torch nor Optuna nor Torch-Pruning.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "search": "autoprune.api",
    "UserError": "autoprune.errors",
    "load_pruned": "autoprune.ship.apply",
    "Group": "autoprune.core.groups",
    "find_groups": "autoprune.core.groups",
    "IMPORTANCES": "autoprune.core.importance",
    "method_names": "autoprune.core.importance",
    "count_flops": "autoprune.core.measure.flops",
    "count_nonzeros": "autoprune.core.measure.flops",
    "count_params": "autoprune.core.measure.flops",
    "MODELS": "autoprune.task.models",
    "build_model": "autoprune.task.models",
    "GroupChoice": "autoprune.core.policy",
    "Policy": "autoprune.core.policy",
    "Pruner": "autoprune.core.prune",
    "SearchConfig": "autoprune.task.config",
    "load_weights": "autoprune.core.checkpoints",
    "apply_policy": "autoprune.core.prune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
