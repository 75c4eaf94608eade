"""Every built-in model and a sample of torchvision classifiers prune and still run."""

import pytest
import torch

from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner
from autoprune.errors import UserError
from autoprune.task.models import MODELS, build_model


def prune_half(model, example):
    pruner = Pruner(model, example, ignored=resolve_ignore(model, example))
    policy = Policy({g.id: GroupChoice("l1", 0.5) for g in pruner.groups})
    pruned, resolved = pruner.apply(policy)
    return pruner, pruned, resolved


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32), (1, 8)])
def test_builtin_models_prune_and_keep_output_shape(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels, input_size=size).eval()
    example = torch.zeros(1, in_channels, size, size)
    pruner, pruned, resolved = prune_half(model, example)
    assert len(pruner.groups) >= 5
    out = pruned(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, 7)
    assert count_flops(pruned, example) < 0.5 * count_flops(model, example)
    for gid, g in resolved.groups.items():
        assert dict(pruned.named_modules())[gid].weight.shape[0] == g.kept
    pruned.train()
    pruned(torch.randn(4, in_channels, size, size)).sum().backward()


TORCHVISION_SAMPLE = ["resnet18", "mobilenet_v2", "efficientnet_b0", "vgg11_bn", "densenet121", "regnet_x_400mf"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_SAMPLE)
def test_torchvision_models_prune_and_keep_output_shape(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, input_size=32).eval()
    example = torch.zeros(1, 1, 32, 32)
    pruner, pruned, resolved = prune_half(model, example)
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    if name.startswith("regnet"):  # grouped convs: equal positions removed from every conv group
        grouped = [g for g in pruner.groups if g.channel_groups > 1]
        assert grouped and all(resolved.groups[g.id].kept % g.channel_groups == 0 for g in grouped)
    assert count_flops(pruned, example) < 0.75 * count_flops(model, example)


def test_unknown_model_lists_choices():
    with pytest.raises(UserError, match="unknown model 'resnet21'.*resnet20.*Did you mean"):
        build_model("resnet21", num_classes=10, in_channels=1, input_size=28)


def test_user_model_factory_gets_the_task_shape():
    model = build_model("user_models:tiny_net", num_classes=7, in_channels=2, input_size=28)
    assert model[0].in_channels == 2 and model[-1].out_features == 7
    assert model(torch.zeros(3, 2, 28, 28)).shape == (3, 7)
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        build_model("user_models:nope", num_classes=10, in_channels=1, input_size=28)
    with pytest.raises(UserError, match="returned str, not nn.Module"):
        build_model("user_models:not_a_model", num_classes=10, in_channels=1, input_size=28)
