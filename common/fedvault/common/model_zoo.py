"""What a model is built from: the input spec, the image models, plug-in factories,
and the check that makes a model fit for DP-SGD.

A plug-in model is named ``package.module:factory``: ``factory(spec, outputs)``
receives an :class:`InputSpec` and the number of output units and returns an
``nn.Module`` mapping a float32 batch of shape ``(n, *spec.shape)`` to ``(n,
outputs)``. The name resolves by import on every side (the coordinator never ships
code): a site must have the package installed, and its policy can pin the sha256
of the factory's module file (:func:`plugin_sha256`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fedvault.common.errors import ConfigError, first_line

Factory = Callable[["InputSpec", int], nn.Module]
_PLUGIN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The shape of one input sample: ``features`` for a table, or ``channels``,
    ``height`` and ``width`` for an image. Build with :meth:`tabular` / :meth:`image`.

    Raises :class:`ConfigError` for a mix of both, or a size below 1.
    """

    features: int | None = None
    channels: int | None = None
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        image = (self.channels, self.height, self.width)
        if (self.features is None) == (None in image) or (
            self.features is None and image.count(None) not in (0, 3)
        ):
            raise ConfigError(
                "an input spec is either features, or channels x height x width"
            )
        if any(v is not None and v < 1 for v in (self.features, *image)):
            raise ConfigError(f"input sizes must be >= 1, got {self.shape}")

    @classmethod
    def tabular(cls, features: int) -> InputSpec:
        return cls(features=features)

    @classmethod
    def image(cls, channels: int, height: int, width: int) -> InputSpec:
        return cls(channels=channels, height=height, width=width)

    @property
    def kind(self) -> Literal["tabular", "image"]:
        return "tabular" if self.features is not None else "image"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(features,)`` or ``(channels, height, width)``."""
        if self.features is not None:
            return (self.features,)
        return (self.channels or 0, self.height or 0, self.width or 0)


def is_plugin(name: str) -> bool:
    """Whether ``name`` names a plug-in factory (``package.module:factory``)."""
    return ":" in name


def resolve_factory(name: str) -> Factory:
    """Import the factory ``package.module:factory``.

    Raises :class:`ConfigError` (one line) for a malformed name, a module that is not
    installed or fails to import, or a missing or non-callable attribute.
    """
    module_name, attribute = _split(name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"model {name!r}: module {exc.name or module_name!r} is not installed here"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"model {name!r}: importing {module_name} failed "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {module_name} has no callable {attribute}")
    built: Factory = factory
    return built


def plugin_sha256(name: str) -> str:
    """Hex sha256 of the file that defines the plug-in's module, for site policies.

    Found without running the module itself (its parent packages are imported).
    Raises :class:`ConfigError` if the module cannot be found or has no source file.
    """
    module_name, _ = _split(name)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"model {name!r}: no module file for {module_name} here")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def build_plugin(name: str, spec: InputSpec, outputs: int) -> nn.Module:
    """Call the plug-in factory and check what it returns on a batch of two zeros.

    Raises :class:`ConfigError` if the factory raises, what it returns is not an
    ``nn.Module``, or its output for a ``(2, *spec.shape)`` batch is not of shape
    ``(2, outputs)``.
    """
    factory = resolve_factory(name)
    try:
        model = factory(spec, outputs)
    except Exception as exc:
        raise ConfigError(
            f"model {name!r}: the factory raised {type(exc).__name__}: "
            f"{first_line(exc)} "
            "(it is called as factory(spec, outputs): docs/models.md)"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {name!r}: the factory returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *spec.shape))
    except Exception as exc:
        raise ConfigError(
            f"model {name!r} fails on input of shape {(2, *spec.shape)}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name!r}: output for a batch of 2 should have shape "
            f"{(2, outputs)}, got {got}"
        )
    return model


def small_cnn(spec: InputSpec, outputs: int, *, hidden: int = 128) -> nn.Module:
    """A small conv net for ``spec``'s images: 3x3 conv blocks (GroupNorm, ReLU,
    2x2 max-pooling while the image is at least 8 pixels high and wide), a second
    block only while the image is still over 4x4 after the first, average-pooled to
    at most 4x4, then the linear head (no hidden dense layer).

    The blocks have ``hidden // 2`` and ``hidden`` channels (multiples of 4, at
    most 16 and 32). An 8x8 digit takes one block of 16 channels: 4x4x16 features
    into the head, 2,762 weights for 10 classes; a 28x28 image two (16, 32), 7x7
    average-pooled to 4x4. Fewer weights is less DP noise in all: on digits at
    epsilon 3 this shape beat two blocks, with or without a dense hidden layer, at
    every seed tried (docs/models.md, "Measured").
    Input: float32 (n, channels, height, width); output (n, ``outputs``).
    """
    channels, height, width = spec.shape
    layers: list[nn.Module] = []
    narrow = max(4, min(32, hidden) // 4 * 4)
    for block, width_out in enumerate((max(4, narrow // 2 // 4 * 4), narrow)):
        if block and min(height, width) <= 4:
            break
        layers += [
            nn.Conv2d(channels, width_out, 3, padding=1),
            nn.GroupNorm(4, width_out),
            nn.ReLU(),
        ]
        if min(height, width) >= 8:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = width_out
    pooled = (min(height, 4), min(width, 4))
    layers += [
        nn.AdaptiveAvgPool2d(pooled),
        nn.Flatten(),
        nn.Linear(channels * pooled[0] * pooled[1], outputs),
    ]
    return nn.Sequential(*layers)


def describe_small_cnn(spec: InputSpec, hidden: int) -> str:
    """:func:`small_cnn` for ``spec`` in words, read off the net as built, e.g.
    ``3x3 conv 16 channels, GroupNorm, linear head`` (8x8 images, hidden 32)."""
    net = small_cnn(spec, 1, hidden=hidden)
    widths = [str(m.out_channels) for m in net.modules() if isinstance(m, nn.Conv2d)]
    return f"3x3 conv {'-'.join(widths)} channels, GroupNorm, linear head"


def resnet18(spec: InputSpec, outputs: int) -> nn.Module:
    """torchvision's ResNet-18 (random weights) with GroupNorm in place of BatchNorm.

    The first convolution takes ``spec.channels``; images under 64 pixels high or
    wide get a 3x3 stride-1 first convolution and no max-pooling (as for CIFAR),
    larger ones keep the 7x7 stride-2 one. The head has ``outputs`` units.

    The GroupNorm layers are those Opacus' ``ModuleValidator.fix`` puts in place of
    BatchNorm (gcd(32, channels) groups), built directly: the residual additions and
    ReLUs run out of place, because Opacus' per-sample gradient hooks cannot follow
    a layer output changed in place, and that block cannot be cloned by the fixer.
    """
    models = _torchvision_models()
    channels, height, width = spec.shape
    model = models.ResNet(
        _out_of_place_block(), [2, 2, 2, 2], num_classes=outputs, norm_layer=_group_norm
    )
    if min(height, width) < 64:
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    _out_of_place(model)
    resnet: nn.Module = model
    return resnet


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _torchvision_models() -> Any:
    from fedvault.common._torchvision import torchvision

    torchvision()
    return importlib.import_module("torchvision.models.resnet")


@cache
def _out_of_place_block() -> type[nn.Module]:
    """torchvision's ``BasicBlock`` (what ``resnet18`` is built of) with the
    residual sum ``out = out + identity`` instead of ``out += identity``."""
    base = _torchvision_models().BasicBlock

    class BasicBlock(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)  # type: ignore[no-any-return]

    return BasicBlock


def _split(name: str) -> tuple[str, str]:
    if not _PLUGIN.match(name):
        raise ConfigError(
            f"model {name!r}: a plug-in model is named package.module:factory"
        )
    module_name, attribute = name.split(":")
    return module_name, attribute


def prepare_for_dp(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """Make ``model`` fit for Opacus' DP-SGD, saying what was changed.

    Opacus' ``ModuleValidator`` fixes what it can (BatchNorm -> GroupNorm, LSTM ->
    DPLSTM, ...) on a copy; each replaced layer gives one note, e.g. ``"layer 'bn1':
    BatchNorm2d replaced by GroupNorm"``. In-place activations are made
    out-of-place (Opacus' hooks cannot follow them), with a note each. The model
    returned is in training mode; an unchanged model is returned as is. Run it on
    both sides so that the coordinator's and the sites' architectures (and
    state-dict keys) agree.

    Raises :class:`ConfigError` naming the first layer that cannot be fixed: one the
    validator rejects without a fix, or a trainable layer that keeps buffers
    (Opacus cannot make its buffers private).
    """
    from opacus.validators import ModuleValidator

    model.train()
    notes: tuple[str, ...] = ()
    if ModuleValidator.validate(model, strict=False):
        before = {name: type(m).__name__ for name, m in model.named_modules()}
        try:
            model = ModuleValidator.fix(model)
        except Exception as exc:
            hint = ""
            if "local object" in str(exc):  # fix() copies the model by pickling
                hint = (
                    " (define the model's classes at module level, not in the factory)"
                )
            raise ConfigError(
                f"model cannot be made fit for DP-SGD: {first_line(exc)}{hint}"
            ) from None
        model.train()
        notes = tuple(
            f"layer {name!r}: {before[name]} replaced by {type(m).__name__}"
            for name, m in model.named_modules()
            if name in before and before[name] != type(m).__name__
        )
    notes += tuple(
        f"layer {name!r}: in-place {kind} made out-of-place"
        for name, kind in _out_of_place(model)
    )
    _check_dp_layers(model)
    return model, notes


def _out_of_place(model: nn.Module) -> list[tuple[str, str]]:
    """Switch in-place activations (``ReLU(inplace=True)``) to out-of-place: Opacus'
    backward hooks fail on a view changed in place. Same outputs, same weights."""
    changed = []
    for name, layer in model.named_modules():
        if getattr(layer, "inplace", False) is True:
            layer.inplace = False
            changed.append((name, type(layer).__name__))
    return changed


def _check_dp_layers(model: nn.Module) -> None:
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    for name, layer in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(layer))
        errors = validator(layer) if validator is not None else []
        if errors:
            reason = first_line(errors[0])
            raise ConfigError(
                f"layer {name!r} ({type(layer).__name__}) cannot be trained with "
                f"DP-SGD: {reason}"
            )
        if next(layer.buffers(), None) is not None:
            raise ConfigError(
                f"layer {name!r} ({type(layer).__name__}) cannot be trained with "
                "DP-SGD: it has trainable weights and buffers (running statistics "
                "are not private); replace it with a layer without buffers"
            )
    # Any other buffer the model saves leaves every site with its update, and
    # DP-SGD does not train it: a statistic a layer keeps of the data would go
    # out with no noise. A constant can stay, as a non-persistent buffer.
    saved = set(model.state_dict())
    for key, _ in model.named_buffers():
        if key in saved:
            owner = key.rpartition(".")[0]
            kind = type(model.get_submodule(owner)).__name__
            raise ConfigError(
                f"layer {owner!r} ({kind}) cannot be trained with DP-SGD: its "
                f"buffer {key!r} would leave each site outside DP-SGD (a statistic "
                "of the data is not private); register a constant with "
                "persistent=False, or replace the layer"
            )
