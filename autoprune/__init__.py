"""autoprune: search per-group structured-pruning policies under a FLOPs budget.

Public API::

    study = autoprune.search(model, (x_train, y_train), (x_val, y_val), example_input,
                             budget_flops=0.5, storage="sqlite:///my.db")
    pruned, policy = autoprune.apply_policy(model, policy, example_input=example_input)
"""

from autoprune.api import search
from autoprune.errors import UserError
from autoprune.export import load_pruned
from autoprune.groups import Group, find_groups
from autoprune.importance import IMPORTANCES, method_names
from autoprune.measure import count_flops, count_nonzeros, count_params
from autoprune.models import MODELS, build_model
from autoprune.policy import GroupChoice, Policy
from autoprune.prune import Pruner, apply_policy

__all__ = [
    "IMPORTANCES",
    "MODELS",
    "Group",
    "GroupChoice",
    "Policy",
    "Pruner",
    "UserError",
    "apply_policy",
    "build_model",
    "count_flops",
    "count_nonzeros",
    "count_params",
    "find_groups",
    "load_pruned",
    "method_names",
    "search",
]
