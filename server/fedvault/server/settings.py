"""The coordinator's view of a run: training settings plus where things live.

:class:`ServerSettings` is written into Flower's run config by the launchers
(``fedvault simulate`` and ``fedvault server start``, via :meth:`to_run_config`) and
read back by the ServerApp (:meth:`from_run_config`): one object each way, so no
run-config key is spelled outside this module and :mod:`fedvault.common.protocol`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError
from fedvault.common.protocol import RUN_CLIENT_THREADS, RUN_KEY, RUN_TARGET

RunConfig = dict[str, bool | int | float | str]

_OUT_DIR = "out-dir"
_TEST_DATA = "test-data"
_EXPECTED_SITES = "expected-sites"
_EXCLUDED_SITES = "excluded-sites"
_RESUME = "resume"
_SIMULATION = "simulation"
_INIT_MODEL = "init-model"

# The run-config keys of the coordinator itself (besides TrainingConfig's).
APP_KEYS = (
    RUN_TARGET,
    _OUT_DIR,
    _TEST_DATA,
    _EXPECTED_SITES,
    _EXCLUDED_SITES,
    RUN_CLIENT_THREADS,
    RUN_KEY,
    _RESUME,
    _SIMULATION,
    _INIT_MODEL,
)


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything the ServerApp reads from Flower's run config, parsed once.

    ``client_threads``: torch threads per site process (0: torch's default);
    ``run_key``: names the run in every site's ledger across coordinator restarts;
    ``excluded_sites``: sites left out before the run, with why;
    ``simulation``: one party runs every site (``fedvault simulate``): the
    coordinator's own randomness (client-level DP noise) is then seeded from the
    run's seed, for "same seed, same result"; a deployed coordinator draws it from
    the OS, so that nobody who reads the seed can replay the noise;
    ``init_model``: the model file (or run folder) round 1 starts from.
    """

    training: TrainingConfig
    target: str
    out_dir: Path
    test_data: Path | None = None
    expected_sites: int = 0
    excluded_sites: dict[str, str] = field(default_factory=dict)
    client_threads: int = 0
    run_key: str = ""
    resume: bool = False
    simulation: bool = False
    init_model: Path | None = None

    def to_run_config(self) -> RunConfig:
        """The flat scalar mapping Flower's run config carries (absolute paths as
        given; an empty ``test-data`` means no central test split)."""
        values: RunConfig = dict(self.training.to_run_config())
        values |= {
            RUN_TARGET: self.target,
            _OUT_DIR: str(self.out_dir),
            _TEST_DATA: "" if self.test_data is None else str(self.test_data),
            _EXPECTED_SITES: self.expected_sites,
            _EXCLUDED_SITES: json.dumps(self.excluded_sites),
            RUN_CLIENT_THREADS: self.client_threads,
            RUN_KEY: self.run_key,
            _RESUME: self.resume,
            _SIMULATION: self.simulation,
            _INIT_MODEL: "" if self.init_model is None else str(self.init_model),
        }
        return values

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        """Parse a run config; :class:`ConfigError` names a missing or bad key."""
        for key in (RUN_TARGET, _OUT_DIR):
            if not str(run_config.get(key, "")):
                raise ConfigError(f"run config: {key!r} is required")
        test = str(run_config.get(_TEST_DATA, ""))
        init = str(run_config.get(_INIT_MODEL, ""))
        try:
            excluded = json.loads(str(run_config.get(_EXCLUDED_SITES, "{}")))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"run config: {_EXCLUDED_SITES} is not JSON") from exc
        return cls(
            training=TrainingConfig.from_run_config(run_config),
            target=str(run_config[RUN_TARGET]),
            out_dir=Path(str(run_config[_OUT_DIR])),
            test_data=Path(test) if test else None,
            expected_sites=int(run_config.get(_EXPECTED_SITES, 0)),
            excluded_sites={str(k): str(v) for k, v in excluded.items()},
            client_threads=int(run_config.get(RUN_CLIENT_THREADS, 0)),
            run_key=str(run_config.get(RUN_KEY, "")),
            resume=bool(run_config.get(_RESUME, False)),
            simulation=bool(run_config.get(_SIMULATION, False)),
            init_model=Path(init) if init else None,
        )


def init_model_of(run_config: Mapping[str, Any]) -> Path | None:
    """The model a run config starts from (None: from scratch), read alone: a
    resumed run keeps the parent it started from."""
    init = str(run_config.get(_INIT_MODEL, ""))
    return Path(init) if init else None
