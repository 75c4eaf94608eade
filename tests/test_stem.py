"""--prune-stem: the stem's output channels, and every channel coupled to them, become one
more prunable group (in a ResNet, the first stage's residual stream)."""

import re

import pytest
import torch

import autoprune
from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner
from autoprune.policy_search.plan import plan
from autoprune.policy_search.study import IDENTITY_DEFAULTS, check_identity
from autoprune.task.config import SearchConfig
from autoprune.task.models import build_model


def test_the_head_stays_whole_and_the_stem_only_on_request():
    resnet = build_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    assert resolve_ignore(resnet, torch.zeros(1, 1, 8, 8)) == ["conv1", "fc"]
    assert resolve_ignore(resnet, torch.zeros(1, 1, 8, 8), prune_stem=True) == ["fc"]
    # the head is the last layer, not the last name in sorted order
    cnn = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    assert resolve_ignore(cnn, torch.zeros(1, 1, 8, 8), prune_stem=True) == ["classifier.5"]
    assert resolve_ignore(cnn, torch.zeros(1, 1, 8, 8)) == ["classifier.5", "features.0"]


def test_pruning_the_stem_thins_the_first_residual_stream():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=8).eval()
    example = torch.zeros(1, 1, 8, 8)
    pruner = Pruner(model, example, ignored=resolve_ignore(model, example, prune_stem=True))
    assert "conv1" in [g.id for g in pruner.groups]
    assert "conv1" not in [g.id for g in Pruner(model, example, ignored=resolve_ignore(model, example)).groups]

    pruned, resolved = pruner.apply(Policy({"conv1": GroupChoice("l1", 0.5)}))
    layers = dict(pruned.named_modules())
    assert resolved.groups["conv1"].kept == 8
    # the stream: the stem, every stage-1 block's output, and what stage 2 reads from it
    assert layers["conv1"].out_channels == 8 and layers["bn1"].num_features == 8
    assert [layers[f"layers.{i}.conv2"].out_channels for i in range(3)] == [8, 8, 8]
    assert layers["layers.3.conv1"].in_channels == 8 and layers["layers.3.shortcut.0"].in_channels == 8
    # the blocks' inner widths are other groups, untouched
    assert [layers[f"layers.{i}.conv1"].out_channels for i in range(3)] == [16, 16, 16]
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert count_flops(pruned, example) < count_flops(model, example)


def test_a_budget_below_reach_says_that_pruning_the_stem_reaches_it():
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    example = torch.zeros(1, 1, 28, 28)
    base = {"model": "resnet20", "budget_flops": "0.1", "keep_min": 0.125}
    with pytest.raises(autoprune.UserError, match="conv1, fc and every channel coupled.*or add --prune-stem"):
        plan(model, example, SearchConfig.from_dict(base))
    reached = plan(model, example, SearchConfig.from_dict({**base, "prune_stem": True}))
    assert reached.min_flops <= reached.budget.flops and reached.ignored == ["fc"]


@pytest.mark.parametrize(("key", "default"), sorted(IDENTITY_DEFAULTS.items()))
def test_studies_stored_before_an_option_existed_resume_and_a_changed_choice_is_refused(key, default):
    """A study stored before ``key`` existed resumes with today's default of it (so the stored
    meaning must be SearchConfig's default), and is refused with any other value."""
    stored = {"config": {"model": "resnet20", "finetune_steps": 150}}  # no key: stored before it existed
    today = getattr(SearchConfig(budget_flops="0.5"), key)
    assert today == default, f"IDENTITY_DEFAULTS[{key!r}] = {default!r} but SearchConfig's default is {today!r}"
    check_identity("old", stored, {"model": "resnet20", "finetune_steps": 150, key: today})
    changed = (not default if isinstance(default, bool) else "0.5" if default is None else
               default + 1 if isinstance(default, int) else default / 2 if isinstance(default, float) else default + "x")
    with pytest.raises(autoprune.UserError, match=re.escape(f"{key}: stored {default!r}, now {changed!r}")):
        check_identity("old", stored, {"model": "resnet20", "finetune_steps": 150, key: changed})
