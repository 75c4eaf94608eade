"""Factories as a user writes them, imported by name (``--model user_models:tiny_net``)."""

from torch import nn


def tiny_net(num_classes: int, in_channels: int) -> nn.Module:
    """Takes only two of the keywords autoprune offers (no ``input_size``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def not_a_model(**_: object) -> str:
    return "a string"
