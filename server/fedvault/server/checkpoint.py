"""The coordinator's checkpoint: everything needed to continue a run after a crash.

Written atomically after every completed round (``checkpoint.pt`` in the run's
output folder): the global model, the federated preprocessing, the metrics history,
what is known of each site, the strategy's own state (FedAdam's moments) and the
run's key, which sites use as the run id of their privacy ledgers, so a resumed run
continues the same run there too (same sigma, same run budget) and what sites
actually trained is never counted twice or forgotten.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvault.common.errors import FederationError
from fedvault.common.files import atomic_write
from fedvault.server.report import SiteRecord

CHECKPOINT_FILE = "checkpoint.pt"
_STRATEGY_ATTRIBUTES = ("m_t", "v_t")  # FedOpt family (FedAdam): server moments


@dataclass
class RunState:
    """A run as of its last completed round."""

    run_key: str
    rounds_completed: int
    arrays: dict[str, np.ndarray]
    preprocessing: str
    history: list[dict[str, Any]]
    sites: dict[str, dict[str, Any]]
    excluded: dict[str, str]
    strategy: dict[str, dict[str, np.ndarray]]

    def site_records(self) -> dict[str, SiteRecord]:
        return {name: SiteRecord(**fields) for name, fields in self.sites.items()}


def strategy_state(strategy: object) -> dict[str, dict[str, np.ndarray]]:
    """The strategy's own mutable state that a resumed run must start from."""
    state = {}
    for attribute in _STRATEGY_ATTRIBUTES:
        value = getattr(strategy, attribute, None)
        if value:
            state[attribute] = {k: np.asarray(v) for k, v in value.items()}
    return state


def restore_strategy(strategy: object, state: dict[str, dict[str, np.ndarray]]) -> None:
    for attribute, value in state.items():
        if attribute not in _STRATEGY_ATTRIBUTES or not hasattr(strategy, attribute):
            raise FederationError(
                f"checkpoint holds state {attribute!r} this "
                "strategy does not have: resume with the same one"
            )
        setattr(strategy, attribute, {k: np.array(v) for k, v in value.items()})


def save(root: Path, state: RunState) -> None:
    buffer = io.BytesIO()
    payload = asdict(state)
    torch.save(payload, buffer)
    atomic_write(root / CHECKPOINT_FILE, buffer.getvalue())


def load(root: Path) -> RunState:
    """The checkpoint of the run in ``root``; FederationError if there is none."""
    path = root / CHECKPOINT_FILE
    if not path.is_file():
        raise FederationError(f"no checkpoint to resume from in {root}")
    try:
        payload = torch.load(path, weights_only=False)
        return RunState(**payload)
    except (OSError, RuntimeError, TypeError, EOFError) as exc:
        raise FederationError(f"{path}: unreadable checkpoint ({exc})") from exc
