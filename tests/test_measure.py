"""FLOPs against hand counts (fvcore conventions: 1 multiply-add = 1 flop, BN 2/element in
eval, adaptive average pooling 1/input element, biases and activations free)."""

import torch

from autoprune.core.measure.flops import count_flops, count_nonzeros, count_params
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner


def hand_count(c1: int, c2: int) -> int:
    hw = 8 * 8
    conv1 = hw * c1 * 1 * 9
    bn1 = 2 * c1 * hw
    conv2 = hw * c2 * c1 * 9
    bn2 = 2 * c2 * hw
    pool = c2 * hw
    fc = c2 * 3
    return conv1 + bn1 + conv2 + bn2 + pool + fc


def test_dense_flops_equal_hand_count(two_conv):
    assert hand_count(4, 6) == 17810
    assert count_flops(two_conv, torch.zeros(1, 1, 8, 8)) == 17810


def test_pruned_flops_equal_hand_count_of_smaller_net(two_conv):
    pruner = Pruner(two_conv, torch.zeros(1, 1, 8, 8), ignored=["fc"])
    assert [g.id for g in pruner.groups] == ["conv1", "conv2"]
    policy = Policy({"conv1": GroupChoice("l1", 0.5), "conv2": GroupChoice("l2", 0.5)})
    pruned, resolved = pruner.apply(policy)
    assert resolved.channels() == {"conv1": 2, "conv2": 3}
    assert pruned.conv1.out_channels == 2 and pruned.conv2.in_channels == 2
    assert pruned.conv2.out_channels == 3 and pruned.fc.in_features == 3
    assert count_flops(pruned, torch.zeros(1, 1, 8, 8)) == hand_count(2, 3) == 5449


def test_params_and_nonzeros(two_conv):
    expected = 4 * 9 + 2 * 4 + 6 * 4 * 9 + 2 * 6 + 6 * 3 + 3
    assert count_params(two_conv) == expected == 293
    with torch.no_grad():
        for p in two_conv.parameters():
            p.fill_(0.5)
        two_conv.conv2.weight[0].zero_()  # one output filter: 4 x 3 x 3 weights
        two_conv.bn1.bias.zero_()  # 4 more
        two_conv.fc.weight[2, :3] = 0.0  # 3 more
    assert count_nonzeros(two_conv) == 293 - 36 - 4 - 3


class StemBlockHead(torch.nn.Module):
    """A stem (conv 1->4, BN, ReLU), torchvision's own ResNet BasicBlock(4, 4) and a head
    (global average pool, linear 4->3), on 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.block = BasicBlock(4, 4)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def basic_block_count(stream: int, inner: int) -> int:
    """By hand: ``stream`` channels in the stem and the block's residual sum, ``inner`` between
    the block's two convs; 8x8 positions everywhere."""
    hw = 64
    stem = hw * stream * 1 * 9 + 2 * stream * hw
    block = hw * inner * stream * 9 + 2 * inner * hw + hw * stream * inner * 9 + 2 * stream * hw
    head = stream * hw + stream * 3
    return stem + block + head


def test_flops_of_a_torchvision_basic_block_by_hand():
    from autoprune.core.measure.costmodel import FlopsPredictor

    torch.manual_seed(0)
    model = StemBlockHead().eval()
    example = torch.zeros(1, 1, 8, 8)
    assert basic_block_count(4, 4) == 22540
    assert count_flops(model, example) == 22540
    pruner = Pruner(model, example, ignored=["fc"])
    # the residual stream (stem + the block's second conv) is one group, the block's inner width another
    assert {g.id: set(g.members) for g in pruner.groups} == {"conv1": {"conv1", "block.conv2"},
                                                              "block.conv1": {"block.conv1"}}
    pruned, resolved = pruner.apply(Policy({"conv1": GroupChoice("l1", 0.5), "block.conv1": GroupChoice("l1", 0.75)}))
    assert resolved.channels() == {"conv1": 2, "block.conv1": 3}
    assert count_flops(pruned, example) == basic_block_count(2, 3) == 9094
    # the predictor scales every layer exactly, the pooling layer with the residual sum it reads
    predicted = FlopsPredictor(model, example, ignored=["fc"]).predict(resolved.channels())
    assert predicted == 9094
