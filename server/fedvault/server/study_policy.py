"""The consortium's limits on submitted studies: a policy file an admin edits.

``policy.toml`` (read afresh for every submission, so an edit applies to the next
one without a restart)::

    [limits]
    models = ["mlp", "logreg"]     # models a study may train
    targets = ["target"]           # label columns a study may predict
    columns = ["age", "bmi"]       # feature columns a study may train on
    max-epsilon = 3.0              # epsilon a study may ask of each site, per run
    max-rounds = 20
    allow-non-private = false      # true lets a study turn DP off

A study is the TOML of ``fedvault server start --config``; submitted to the
coordinator service it may not name sites (an admin enrolls them) or a test-data
path on the coordinator's disk. With ``columns``, a study must name its feature
columns (``[training] features``), each one listed. :func:`check_study` refuses, with a
:class:`ConfigError` naming the key, whatever is outside the limits.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedvault.common.config import MODEL_NAMES, parse_fields, read_toml
from fedvault.common.errors import ConfigError
from fedvault.server.deploy import CoordinatorConfig, parse_coordinator_config

TABLE = "limits"


@dataclass(frozen=True, kw_only=True)
class StudyLimits:
    """The ``[limits]`` table of the consortium policy."""

    models: list[str] = field(default_factory=lambda: ["mlp"])
    targets: list[str] = field(default_factory=list)
    columns: list[str] | None = None
    max_epsilon: float = 3.0
    max_rounds: int = 20
    allow_non_private: bool = False

    def __post_init__(self) -> None:
        if self.columns is not None and not (
            isinstance(self.columns, list)
            and all(isinstance(c, str) for c in self.columns)
        ):
            raise ConfigError(
                f"columns: expected a list of names, got {self.columns!r}"
            )
        unknown = sorted(set(self.models) - set(MODEL_NAMES))
        if unknown:
            raise ConfigError(f"models: unknown model {unknown[0]!r}")
        if not self.max_epsilon > 0:
            raise ConfigError(f"max-epsilon: must be > 0, got {self.max_epsilon}")
        if self.max_rounds < 1:
            raise ConfigError(f"max-rounds: must be >= 1, got {self.max_rounds}")


def load_limits(path: Path) -> StudyLimits:
    """Read ``[limits]`` of the consortium policy file.

    Raises:
        ConfigError: no file, no table, or a bad key (named).
    """
    if not path.is_file():
        raise ConfigError(f"consortium policy file not found: {path}")
    table = read_toml(path).get(TABLE)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: missing [{TABLE}] table")
    return parse_fields(StudyLimits, table, source=f"{path} [{TABLE}]")


def parse_study(text: str, *, base: Path) -> CoordinatorConfig:
    """A submitted study config, parsed as ``server start --config`` parses it.

    Raises:
        ConfigError: not TOML, a bad key, ``[sites]`` or ``test-data`` given.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study: not TOML ({exc})") from None
    study = parse_coordinator_config(raw, base=base)
    if study.sites:
        raise ConfigError(
            "study: [sites] is not accepted; sites are enrolled by an admin"
        )
    if study.options.test_data:
        raise ConfigError(
            "study: test-data is not accepted (a path on the coordinator's disk)"
        )
    return study


def check_study(limits: StudyLimits, study: CoordinatorConfig) -> None:
    """Refuse a study outside the consortium's limits.

    Raises:
        ConfigError: naming the first key outside the limits and the limit.
    """
    training = study.training
    if training.model not in limits.models:
        raise ConfigError(
            f"study: model {training.model!r} is not allowed "
            f"(allowed: {', '.join(limits.models)})"
        )
    target = study.options.target
    if target not in limits.targets:
        raise ConfigError(
            f"study: target {target!r} is not allowed "
            f"(allowed: {', '.join(limits.targets) or 'none'})"
        )
    _check_columns(limits, training.features)
    if training.rounds > limits.max_rounds:
        raise ConfigError(
            f"study: rounds {training.rounds} is above the consortium's "
            f"max-rounds {limits.max_rounds}"
        )
    if not training.dp and not limits.allow_non_private:
        raise ConfigError(
            "study: dp = false is not allowed (the consortium's allow-non-private)"
        )
    if training.dp and training.epsilon > limits.max_epsilon:
        raise ConfigError(
            f"study: epsilon {training.epsilon:g} is above the consortium's "
            f"max-epsilon {limits.max_epsilon:g}"
        )


def _check_columns(limits: StudyLimits, features: tuple[str, ...]) -> None:
    if limits.columns is None:
        return
    allowed = ", ".join(limits.columns) or "none"
    if not features:
        raise ConfigError(
            "study: [training] features not given (a study of every column); the "
            f"consortium allows only the columns {allowed}: name them"
        )
    for column in features:
        if column not in limits.columns:
            raise ConfigError(
                f"study: column {column!r} is not allowed (allowed: {allowed})"
            )
