"""Replaying a round's update after a coordinator restart, at no privacy cost.

If the coordinator dies after a site trained round r (and recorded it in its ledger)
but before the update was aggregated, the resumed run asks for round r again, from
the same global model. Training again would spend budget a second time. Instead the
site keeps its last update, and sends exactly the same bytes again when the same run
asks for the same round from the same global model: releasing an identical output
twice reveals nothing new (post-processing), so the ledger is not charged again. The
update's hash must match the ledger's record of that round, or nothing is replayed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from fedvault.common.files import atomic_write

FOLDER = "replay"


def _path(state_dir: Path, run_id: str, server_round: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return state_dir / FOLDER / f"{safe}-{server_round}.pt"


def keep(
    state_dir: Path,
    run_id: str,
    server_round: int,
    *,
    global_hash: str,
    update: dict[str, torch.Tensor],
    metrics: dict[str, float],
) -> None:
    """Keep this round's update (only the latest round of a run is kept)."""
    folder = state_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pt"):
        old.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save({"global": global_hash, "update": update, "metrics": metrics}, buffer)
    atomic_write(_path(state_dir, run_id, server_round), buffer.getvalue())


def find(
    state_dir: Path, run_id: str, server_round: int, *, global_hash: str
) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """The kept update of (run, round) if it was trained from ``global_hash``."""
    path = _path(state_dir, run_id, server_round)
    if not path.is_file():
        return None
    kept: dict[str, Any] = torch.load(path, weights_only=True)
    if kept.get("global") != global_hash:
        return None
    return kept["update"], kept["metrics"]
