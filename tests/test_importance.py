"""Each importance criterion, on a toy layer whose answer is known, removes exactly the
expected channels. Toy: conv1 (2->4 channels, 1x1) -> ReLU -> avgpool -> linear(4->3), with
the linear's weights all equal, so only conv1's filters decide the ranking."""

import pytest
import torch
from torch import nn

from autoprune.core.batches import TensorSplit
from autoprune.core.importance import IMPORTANCES, Calibration
from autoprune.core.loops import finetune
from autoprune.core.measure.flops import count_flops, count_nonzeros
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner, kept_channels


class Toy(nn.Module):
    def __init__(self, filters: list[list[float]], n_out: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, len(filters), 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(len(filters), n_out)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(filters).view(len(filters), 2, 1, 1))
            self.fc.weight.fill_(0.5)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv1(x))), 1))


def kept(model: nn.Module, method: str, keep: float, calibration=None, seed: int = 0) -> list[int]:
    pruner = Pruner(model, torch.zeros(1, 2, 4, 4), ignored=["fc"], calibration=calibration, seed=seed)
    pruned, resolved = pruner.apply(Policy({"conv1": GroupChoice(method, keep)}))
    assert pruned.conv1.out_channels == resolved.groups["conv1"].kept
    return list(resolved.groups["conv1"].kept_indices)


def positive_inputs(n: int = 64) -> Calibration:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, 4, 4, generator=gen) + 0.5
    return Calibration(x, torch.randint(0, 3, (n,), generator=gen), batch_size=16)


@pytest.mark.parametrize("method", IMPORTANCES.names())
def test_every_registered_criterion_ranks_each_channel_deterministically(method):
    """Whatever is registered: one score per channel, the same ranking twice, the asked count
    kept (each criterion's own answer is checked on a toy below)."""
    filters = [[float(i % 5) - 2.0, 1.0 + 0.5 * i] for i in range(8)]
    first = kept(Toy(filters), method, 0.5, positive_inputs())
    assert first == kept(Toy(filters), method, 0.5, positive_inputs())
    assert len(first) == 4 and first == sorted(set(first)) and 0 <= first[0] and first[-1] < 8


def test_l1_and_l2_rank_by_their_own_norm():
    # L1 norms: 3.0, 3.6, 1.0, 2.7   L2 norms: 3.0, 2.55, 0.71, 2.7
    filters = [[3.0, 0.0], [1.8, 1.8], [0.5, 0.5], [2.7, 0.0]]
    assert kept(Toy(filters), "l1", 0.5) == [0, 1]
    assert kept(Toy(filters), "l2", 0.5) == [0, 3]


def test_fpgm_removes_the_filter_nearest_the_geometric_median():
    # channel 2 sits between the others: the most replaceable, though not the smallest
    filters = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.6], [5.0, 5.0]]
    assert kept(Toy(filters), "fpgm", 0.75) == [0, 1, 3]
    assert kept(Toy(filters), "l1", 0.75) == [0, 2, 3]  # magnitude would drop channel 1


def test_taylor_and_activation_remove_a_dead_channel_that_magnitude_keeps():
    # on positive inputs channel 1 is always negative before ReLU: no activation, no gradient
    filters = [[1.0, 0.2], [-4.0, -4.0], [0.3, 0.2], [0.8, 0.9]]
    cal = positive_inputs()
    assert kept(Toy(filters), "l1", 0.75) == [0, 1, 3]
    assert kept(Toy(filters), "taylor", 0.75, cal) == [0, 2, 3]
    assert kept(Toy(filters), "activation", 0.75, cal) == [0, 2, 3]


def test_activation_keeps_the_channels_with_largest_mean_output():
    filters = [[0.1, 0.1], [2.0, 2.0], [0.5, 0.5], [1.0, 1.0]]
    assert kept(Toy(filters), "activation", 0.5, positive_inputs()) == [1, 3]


def test_random_is_seeded_and_keeps_the_right_count():
    filters = [[float(i), 1.0] for i in range(64)]
    a = kept(Toy(filters), "random", 0.5, seed=1)
    assert len(a) == 32
    assert a == kept(Toy(filters), "random", 0.5, seed=1)
    assert a != kept(Toy(filters), "random", 0.5, seed=2)


def test_unstructured_zeroes_the_smallest_weights_keeps_flops_and_stays_sparse():
    filters = [[0.1, 4.0], [3.0, -0.2], [0.3, 2.0], [-5.0, 0.05]]
    model = Toy(filters)
    pruner = Pruner(model, torch.zeros(1, 2, 4, 4), ignored=["fc"])
    pruned, _ = pruner.apply(Policy({"conv1": GroupChoice("unstructured", 0.5)}))
    w = pruned.conv1.weight.detach().view(4, 2)
    assert torch.equal(w == 0, torch.tensor([[True, False], [False, True], [True, False], [False, True]]))
    assert count_flops(pruned, torch.zeros(1, 2, 4, 4)) == count_flops(model, torch.zeros(1, 2, 4, 4))
    assert count_nonzeros(pruned) == count_nonzeros(model) - 4
    cal = positive_inputs()
    finetune(pruned, TensorSplit(cal.x, cal.y), steps=5, batch_size=16, lr=0.1)
    assert torch.equal(pruned.conv1.weight.detach().view(4, 2) == 0, w == 0)


@pytest.mark.parametrize(
    ("channels", "keep", "round_to", "min_channels", "expected"),
    [(64, 0.5, 1, 1, 32), (64, 0.3, 8, 1, 16), (64, 0.05, 1, 8, 8), (10, 0.34, 1, 1, 3), (4, 0.1, 1, 8, 4), (16, 1.0, 8, 1, 16)],
)
def test_kept_channel_counts(channels, keep, round_to, min_channels, expected):
    assert kept_channels(channels, keep, round_to=round_to, min_channels=min_channels) == expected


def test_data_criteria_borrow_the_dense_model_and_give_it_back_as_it_was():
    """taylor and activation score the dense model itself (no 2.5 GB copy of a large model):
    afterwards it holds no gradients or hooks, a frozen layer is still frozen, modes unchanged."""
    model = Toy([[1.0, 0.2], [-4.0, -4.0], [0.3, 0.2], [0.8, 0.9]])
    model.fc.weight.requires_grad_(False)
    model.train()
    pruner = Pruner(model, torch.zeros(1, 2, 4, 4), ignored=["fc"], calibration=positive_inputs())
    for method in ("taylor", "activation"):
        pruner.scores.scores(method)
    assert all(p.grad is None for p in model.parameters())
    assert model.fc.weight.requires_grad is False and model.conv1.weight.requires_grad is True
    assert model.training and not model.conv1._forward_pre_hooks and not model.conv1._forward_hooks
