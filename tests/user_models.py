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


# --------------------------------------------------------------------------- architectures users write
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class ConcatDepthwise(nn.Module):
    """Two branches concatenated, then a depthwise conv over the concatenation (Inception /
    ShuffleNet style): one dependency group spans both producers' channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 8, 1, bias=False)
        self.b = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn_cat = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.pw = nn.Conv2d(32, 32, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = F.relu(self.bn_cat(x))
        x = F.relu(self.bn_pw(self.pw(self.dw(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SplitConcat(nn.Module):
    """A channel split whose halves are processed apart and concatenated again (ShuffleNet V2
    style, with torch.chunk and torch.split)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.right = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_r = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(16, 24, 1, bias=False)
        self.bn_m = nn.BatchNorm2d(24)
        self.tail = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        left, right = torch.chunk(x, 2, dim=1)
        x = torch.cat([left, F.relu(self.bn_r(self.right(right)))], dim=1)
        x = F.relu(self.bn_m(self.mix(x)))
        first, second = torch.split(x, [12, 12], dim=1)
        x = torch.cat([self.tail(first), second], dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class HeadFirst(nn.Module):
    """Declares its classifier before its convolutions: definition order says nothing."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.head = nn.Linear(32, num_classes)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.body(F.relu(self.stem(x))))
        n = x.shape[0]
        return self.head(F.adaptive_avg_pool2d(x, 1).view(n, -1))


class GroupNormSE(nn.Module):
    """GroupNorm instead of BatchNorm, a squeeze-and-excitation gate, a residual add, functional
    activations and a ``view`` flatten."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.gn0 = nn.GroupNorm(4, 32)
        self.conv1 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, 32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, 32)
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.conv3 = nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn0(self.stem(x)))
        y = F.relu(self.gn1(self.conv1(x)))
        y = self.gn2(self.conv2(y))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        x = F.relu(x + y * gate)
        x = F.relu(self.conv3(x))
        n = x.shape[0]
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(n, -1))


USER_MODELS = {"concat_depthwise": ConcatDepthwise, "split_concat": SplitConcat, "head_first": HeadFirst,
               "groupnorm_se": GroupNormSE}


def raising_factory(num_classes: int) -> nn.Module:
    raise ValueError("my factory is broken")


def flat_mlp(num_classes: int) -> nn.Module:
    """Expects 3x32x32 inputs: fails on any other shape, as a user's model does."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes))
