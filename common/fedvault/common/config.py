"""Run settings: parsed once, at the edge, into frozen dataclasses.

Keys are kebab-case everywhere they are written down (TOML files, Flower's run config,
flags); fields are snake_case. Every validation error is a :class:`ConfigError` that
names the offending key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedvault.common.errors import ConfigError
from fedvault.common.privacy import ACCOUNTANTS, Accountant
from fedvault.common.protocol import RUN_FEATURES

ModelName = Literal["mlp", "logreg", "cnn", "resnet18"]
MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)
# The task of a run: inferred from the target where the data is seen ("auto"), or
# forced. Classification is binary or multi-class by the number of labels.
TaskChoice = Literal["auto", "classification", "regression"]
TASK_CHOICES: tuple[TaskChoice, ...] = get_args(TaskChoice)
DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[DeviceChoice, ...] = get_args(DeviceChoice)
# A regression's loss: MSE, or Huber (delta 1, on the standardized target).
RegressionLoss = Literal["mse", "huber"]
REGRESSION_LOSSES: tuple[RegressionLoss, ...] = get_args(RegressionLoss)
_PLUGIN_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
]
STRATEGIES: tuple[StrategyName, ...] = get_args(StrategyName)
# Byzantine-robust aggregation (Flower's): no weighting by example counts.
ROBUST_STRATEGIES: tuple[StrategyName, ...] = STRATEGIES[3:]
ClientDpMode = Literal[
    "off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive"
]
CLIENT_DP_MODES: tuple[ClientDpMode, ...] = (
    "off",
    "server-fixed",
    "client-fixed",
    "server-adaptive",
    "client-adaptive",
)
# Client-level DP modes whose clipping happens at the sites (a Flower client mod).
CLIENT_SIDE_CLIPPING: tuple[ClientDpMode, ...] = ("client-fixed", "client-adaptive")

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; :class:`ConfigError` names the file and the problem."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """What every site and the coordinator agree on for one federated run."""

    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.5
    # SGD momentum of local training (0: plain SGD, and fedvault's fast DP-SGD
    # step for MLPs); with DP it acts on the noised gradients (post-processing).
    momentum: float = 0.0
    strategy: StrategyName = "fedavg"
    proximal_mu: float = 0.01
    # Krum, MultiKrum and Bulyan: how many sites may be malicious (Flower's
    # num_malicious_nodes); FedTrimmedAvg: the share trimmed at each end.
    malicious_sites: int = 1
    trim_fraction: float = 0.2
    fraction_train: float = 1.0
    min_sites: int = 2
    # A built-in (MODEL_NAMES) or a plug-in factory ``package.module:factory``.
    model: str = "mlp"
    hidden: int = 128
    # The feature columns every site trains on and summarizes, besides the target
    # (empty: every column of the site's data). Travels as RUN_FEATURES (JSON).
    features: tuple[str, ...] = ()
    task: TaskChoice = "auto"
    regression_loss: RegressionLoss = "mse"
    device: DeviceChoice = "auto"
    # Image augmentation inside DP-SGD (off for tables): rotation in degrees,
    # zero-padding then random crop (a shift), and K augmented copies per example
    # averaged before clipping (multiplicity; no extra epsilon).
    augment_rotation: float = 0.0
    augment_crop: int = 0
    augment_copies: int = 1
    seed: int = 0
    dp: bool = True
    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    accountant: Accountant = "rdp"
    round_timeout: float = 600.0
    # Client-level DP at the coordinator (Flower's DP strategy wrappers) and
    # secure aggregation (Flower's SecAgg+); see docs/privacy.md.
    client_dp: ClientDpMode = "off"
    client_noise_multiplier: float = 1.0
    client_clipping_norm: float = 1.0
    client_delta: float = 1e-5
    secagg: bool = False
    compress: Literal["none", "int8"] = "none"

    def __post_init__(self) -> None:
        _positive(self, "rounds", "local_epochs", "batch_size", "hidden", "min_sites")
        _positive(self, "lr", "epsilon", "max_grad_norm", "round_timeout")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta: must be in (0, 1), got {self.delta}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(
                f"fraction-train: must be in (0, 1], got {self.fraction_train}"
            )
        if not 0 <= self.noise_multiplier < math.inf:
            raise ConfigError(
                f"noise-multiplier: must be >= 0 (0 = each site plans), "
                f"got {self.noise_multiplier}"
            )
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu: must be >= 0, got {self.proximal_mu}")
        _choice(self, "strategy", STRATEGIES)
        if self.model not in MODEL_NAMES and not _PLUGIN_NAME.match(self.model):
            raise ConfigError(
                f"model: unknown {self.model!r}; use one of {MODEL_NAMES} or a "
                "plug-in package.module:factory"
            )
        _choice(self, "task", TASK_CHOICES)
        _choice(self, "regression_loss", REGRESSION_LOSSES)
        if self.task == "classification" and self.regression_loss != "mse":
            raise ConfigError(
                f"regression-loss: {self.regression_loss!r} is for a regression; "
                "this run's task is classification"
            )
        _choice(self, "device", DEVICES)
        _positive(self, "augment_copies")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        if not 0 <= self.augment_rotation <= 180 or self.augment_crop < 0:
            raise ConfigError(
                "augment-rotation: must be in [0, 180] and augment-crop >= 0"
            )
        _choice(self, "accountant", ACCOUNTANTS)
        _check_features(self.features)
        _check_secure_settings(self)

    @property
    def client_side_clipping(self) -> bool:
        """Whether client-level DP clips each update at the site (a client mod)."""
        return self.client_dp in CLIENT_SIDE_CLIPPING

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat scalar mapping for Flower's run config (``features`` as JSON)."""
        values = {
            key_of(f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "features"
        }
        return values | {RUN_FEATURES: json.dumps(list(self.features))}

    @classmethod
    def from_run_config(cls, mapping: Mapping[str, Any]) -> TrainingConfig:
        """Parse the training keys of a run config, ignoring the others.

        Raises:
            ConfigError: a key is wrong (named).
        """
        names = {key_of(f.name) for f in dataclasses.fields(cls)}
        picked = {k: v for k, v in mapping.items() if k in names}
        if isinstance(picked.get(RUN_FEATURES), str):
            try:
                picked[RUN_FEATURES] = json.loads(picked[RUN_FEATURES])
            except json.JSONDecodeError:
                raise ConfigError(f"{RUN_FEATURES}: not a JSON list") from None
        return parse_fields(cls, picked, source="run config")


def _check_features(features: tuple[str, ...]) -> None:
    if not all(isinstance(f, str) and f for f in features):
        raise ConfigError(f"features: expected column names, got {list(features)!r}")
    twice = sorted({f for f in features if features.count(f) > 1})
    if twice:
        raise ConfigError(f"features: column {twice[0]!r} is named twice")


def _check_secure_settings(t: TrainingConfig) -> None:
    """Client-level DP and SecAgg+ settings, alone and together."""
    _choice(t, "client_dp", CLIENT_DP_MODES)
    _positive(t, "client_noise_multiplier", "client_clipping_norm")
    if not 0 < t.client_delta < 1:
        raise ConfigError(f"client-delta: must be in (0, 1), got {t.client_delta}")
    if t.client_dp != "off" and t.strategy not in ("fedavg", "fedprox"):
        raise ConfigError(
            "client-dp: needs strategy fedavg or fedprox (Flower's accountant needs "
            f"FedAvg's aggregation; {t.strategy} would transform the noised average)"
        )
    if t.secagg and t.strategy in ROBUST_STRATEGIES:
        raise ConfigError(
            f"strategy: {t.strategy} must see each site's update; with secagg the "
            "coordinator sees only their sum (use fedavg, fedprox or fedadam)"
        )
    if t.malicious_sites < 0:
        raise ConfigError(f"malicious-sites: must be >= 0, got {t.malicious_sites}")
    if not 0 <= t.trim_fraction < 0.5:
        raise ConfigError(f"trim-fraction: must be in [0, 0.5), got {t.trim_fraction}")
    if t.secagg and t.client_dp in ("server-fixed", "server-adaptive"):
        raise ConfigError(
            f"client-dp: {t.client_dp!r} clips each update at the coordinator, which "
            "under secagg only sees the sum; use client-fixed with secagg"
        )
    if t.secagg and t.client_dp == "client-adaptive":
        raise ConfigError(
            "client-dp: 'client-adaptive' sends each site's clipping bit in the "
            "clear and Flower's adaptive mod cannot run inside SecAgg+; use "
            "client-fixed with secagg"
        )
    _choice(t, "compress", ("none", "int8"))
    if t.compress != "none" and (t.secagg or t.client_dp != "off"):
        raise ConfigError(
            "compress: int8 updates work without secagg and client-dp only (both "
            "transform the update themselves)"
        )
    if t.secagg and t.min_sites < 2:
        raise ConfigError("min-sites: secagg needs at least 2 sites per round")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key_of(name)}: must be > 0, got {value}")


def _choice(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{key_of(name)}: unknown {value!r}; use one of {allowed}")


def parse_fields(cls: type[T], mapping: Mapping[str, Any], *, source: str) -> T:
    """Build dataclass ``cls`` from kebab-case ``mapping``, coercing scalar types.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
    """
    fields = {key_of(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in mapping.items():
        field = fields[key]
        kwargs[field.name] = _coerce(key, value, hints[field.name])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:  # noqa: C901
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{key}: unknown {value!r}; use one of {get_args(hint)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value
