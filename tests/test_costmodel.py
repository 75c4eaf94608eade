"""The FLOPs predictor used to reject over-budget policies without pruning."""

import random

import pytest
import torch

from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.costmodel import FlopsPredictor
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner
from autoprune.task.models import build_model


def test_exact_on_the_hand_counted_net(two_conv):
    predictor = FlopsPredictor(two_conv, torch.zeros(1, 1, 8, 8), ignored=["fc"])
    assert predictor.predict({}) == 17810
    # conv1 2 of 4, conv2 3 of 6: the hand count of the pruned net is 5449. Layers with
    # weights scale exactly, and so does the parameter-free pooling layer (6 x 64 flops dense),
    # traced back through the functional ReLU to bn2, whose channels it averages.
    assert predictor.predict({"conv1": 2, "conv2": 3}) == 5449


@pytest.mark.parametrize(("name", "channels", "size"), [("smallcnn", 1, 28), ("resnet20", 1, 28), ("mobilenet_v2", 3, 32), ("regnet_x_400mf", 3, 32),
                                                        ("densenet121", 3, 32)])
def test_prediction_matches_fvcore_on_pruned_networks(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, input_size=size).eval()
    example = torch.zeros(1, channels, size, size)
    ignored = resolve_ignore(model, example)
    pruner = Pruner(model, example, ignored=ignored, min_channels=4)
    predictor = FlopsPredictor(model, example, ignored=ignored)
    rng = random.Random(0)
    for _ in range(2):
        policy = Policy({g.id: GroupChoice("l1", rng.choice([0.25, 0.5, 0.75, 1.0])) for g in pruner.groups})
        pruned, resolved = pruner.apply(policy)
        exact = count_flops(pruned, example)
        predicted = predictor.predict(resolved.channels())
        assert exact <= predicted <= exact * 1.001  # errs high, and by little
