"""Model factories: built-ins sized for small images, torchvision by name, user factories.

Every factory is called as ``factory(num_classes=..., in_channels=..., input_size=...)``
and returns a freshly initialised ``nn.Module`` (no weights are downloaded, ever).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from autoprune.errors import UserError, unknown_choice
from autoprune.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


# --------------------------------------------------------------------------- small VGG-style CNN
class SmallCNN(nn.Module):
    """VGG-style conv stages (conv-BN-ReLU, max-pool) and an MLP classifier head.

    A stage is pooled only while the feature map is at least 4 pixels wide, so the same
    network fits 8x8 digits, 28x28 Fashion-MNIST and 32x32 CIFAR.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: int,
        stages: Sequence[Sequence[int]] = ((16,), (32, 32), (64, 64)),
        hidden: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, input_size
        for stage in stages:
            for width in stage:
                layers += [
                    nn.Conv2d(c, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c = width
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * 4, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("smallcnn")
def smallcnn(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, input_size=input_size)


# --------------------------------------------------------------------------- CIFAR-style ResNets
class BasicBlock(nn.Module):
    """ResNet basic block. The shortcut is a 1x1 conv + BN when the shape changes (option B):
    a zero-padding shortcut prunes without error in Torch-Pruning and then breaks at run time."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. 2016 for small images: widths 16/32/64, global pooling."""

    def __init__(self, *, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        c = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(BasicBlock(c, width, 2 if (i > 0 and j == 0) else 1))
                c = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("resnet20")
def resnet20(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(depth=20, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet56")
def resnet56(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(depth=56, num_classes=num_classes, in_channels=in_channels)


# --------------------------------------------------------------------------- torchvision by name
def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    for module in model.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                return module, child_name, child
    return None


def build_torchvision(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision classification model with random weights, ``num_classes`` outputs and
    its first convolution rebuilt for ``in_channels`` inputs."""
    import torchvision

    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if name.startswith(("googlenet", "inception")):
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kwargs)
    found = _first_conv(model)
    if found is not None and in_channels != found[2].in_channels:
        parent, child_name, old = found
        setattr(
            parent,
            child_name,
            nn.Conv2d(
                in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
            ),
        )
    return model


# --------------------------------------------------------------------------- user factories
def load_object(spec: str, kind: str) -> Callable[..., object]:
    """Import ``package.module:attribute`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{kind} {spec!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module {module_name!r} for {kind} {spec!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module fails while importing
        lines = str(exc).strip().splitlines()
        raise UserError(f"importing {module_name!r} for {kind} {spec!r} raised {type(exc).__name__}: "
                        f"{lines[0][:200] if lines else ''}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name!r} has no attribute {attr!r} ({kind} {spec!r})") from None


def call_with_accepted(factory: Callable[..., object], **kwargs: object) -> object:
    """Call ``factory`` with the subset of ``kwargs`` that its signature accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})


def model_names() -> list[str]:
    return MODELS.names() + torchvision_names()


# --------------------------------------------------------------------------- timm (optional extra)
TIMM_PREFIX = "timm:"


def build_timm(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """A timm model by name (``timm:resnet18``), random weights, ``num_classes`` outputs and
    ``in_channels`` inputs. timm is an optional extra: ``pip install 'autoprune[timm]'``."""
    try:
        import timm
    except ImportError:
        raise UserError(f"model {TIMM_PREFIX}{name} needs timm: pip install 'autoprune[timm]'") from None
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        raise UserError(f"unknown timm model {name!r}; close names: {', '.join(near) or 'none'} "
                        "(timm.list_models() lists all)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as exc:  # noqa: BLE001 - timm refuses these settings for this model
        lines = str(exc).strip().splitlines()
        raise UserError(f"timm cannot build {name!r} with {num_classes} classes and {in_channels} input channels: "
                        f"{type(exc).__name__}: {lines[0][:200] if lines else ''}") from exc


def build_model(name: str, *, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build model ``name``: a built-in, a torchvision classifier, ``timm:<name>`` or
    ``package.module:factory``."""
    if name.startswith(TIMM_PREFIX):
        return build_timm(name[len(TIMM_PREFIX):], num_classes=num_classes, in_channels=in_channels)
    if ":" in name:
        factory = load_object(name, "model")
        try:
            model = call_with_accepted(factory, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's factory: name it (--debug shows the traceback)
            lines = str(exc).strip().splitlines()
            raise UserError(f"model factory {name!r} raised {type(exc).__name__}: {lines[0][:200] if lines else ''}") from exc
        if not isinstance(model, nn.Module):
            raise UserError(f"model factory {name!r} returned {type(model).__name__}, not nn.Module")
        return model
    if name in MODELS:
        return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if name in torchvision_names():
        return build_torchvision(name, num_classes=num_classes, in_channels=in_channels)
    raise unknown_choice("model", name, model_names())
