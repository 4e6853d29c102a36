"""The coordinator's view of a run: training settings plus where things live."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError

APP_KEYS = (
    "target",
    "out-dir",
    "test-data",
    "expected-sites",
    "excluded-sites",
    "client-threads",
    "run-key",
    "resume",
)


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ServerApp reads from Flower's run config, parsed once."""

    training: TrainingConfig
    target: str
    out_dir: Path
    test_data: Path | None
    expected_sites: int
    excluded_sites: dict[str, str]
    run_key: str = ""
    resume: bool = False

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        for key in ("target", "out-dir"):
            if not str(run_config.get(key, "")):
                raise ConfigError(f"run config: {key!r} is required")
        test = str(run_config.get("test-data", ""))
        try:
            excluded = json.loads(str(run_config.get("excluded-sites", "{}")))
        except json.JSONDecodeError as exc:
            raise ConfigError("run config: excluded-sites is not JSON") from exc
        return cls(
            training=TrainingConfig.from_run_config(run_config),
            target=str(run_config["target"]),
            out_dir=Path(str(run_config["out-dir"])),
            test_data=Path(test) if test else None,
            expected_sites=int(run_config.get("expected-sites", 0)),
            excluded_sites={str(k): str(v) for k, v in excluded.items()},
            run_key=str(run_config.get("run-key", "")),
            resume=bool(run_config.get("resume", False)),
        )
