"""Repairs of a privacy ledger after a crash: each one explained, none of them
lowering what the ledger says was spent (docs/ledger.md, "Repair").

- An incomplete last line past the head (a crash mid-append, before the head was
  updated) is dropped: its update was never sent.
- An incomplete last line that the head counts (the disk lost the end of a record
  already committed, e.g. a power cut with write caching) cannot be dropped: that
  round was trained and its update may have been sent. With ``recharge`` it is
  replaced by a *recovery record* charging the lost round again at its planned
  cost: the steps, sample rate and noise of the record before it (a run plans them
  once), or those given. A recovery record's ``update_sha256`` is 64 zeros.
- A head written by an older fedvault (no HMAC) is keyed, when asked, after its
  chain verified.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fedvault.client import _ledger_files as files
from fedvault.client._ledger_files import Paths
from fedvault.client._ledger_format import (
    LedgerRecord,
    check_new,
    genesis,
    seal,
    verify_chain,
)
from fedvault.client.policy import SitePolicy
from fedvault.common.errors import ConfigError, IntegrityError
from fedvault.common.privacy import Step, epsilon_spent

logger = logging.getLogger(__name__)

NO_UPDATE = "0" * 64  # the update_sha256 of a recovery record
Action = Literal["none", "dropped-tail", "recharged", "head-keyed"]


@dataclass(frozen=True)
class Repair:
    """What a repair did, in words."""

    action: Action
    message: str
    record: LedgerRecord | None = None


def repair(
    paths: Paths,
    *,
    recharge: bool = False,
    lost: Step | None = None,
    policy: SitePolicy | None = None,
    accept_unkeyed_head: bool = False,
) -> Repair:
    """Repair ``paths``' ledger as the module docstring says, under its lock.

    Raises:
        IntegrityError: more than the tail is wrong, or a committed record is lost
            and ``recharge`` was not given (the message says what to do).
        ConfigError: ``recharge`` without a planned cost to charge.
    """
    with files.locked(paths):
        count, last = files.read_head(paths, keyed=not accept_unkeyed_head)
        data = files.read_records(paths)
        cut = data.rfind(b"\n") + 1
        try:
            verify_chain(
                paths.dataset_id, paths.records, data[:cut], count=count, last=last
            )
        except IntegrityError as error:
            kept = _lost_last(paths, data, cut, count, error)
            return _recharge(paths, kept, data, cut, recharge, lost, policy)
        if cut < len(data):
            _truncate(paths, cut)
        if accept_unkeyed_head:
            files.write_head(paths, count, last)
    if cut < len(data):
        logger.warning("ledger %s: dropped an incomplete last line", paths.dataset_id)
        return Repair("dropped-tail", "dropped an incomplete last line past the head")
    if accept_unkeyed_head:
        return Repair("head-keyed", "head keyed under the site key (chain verified)")
    return Repair("none", "nothing to repair")


def _lost_last(
    paths: Paths, data: bytes, cut: int, count: int, error: IntegrityError
) -> list[LedgerRecord]:
    """The complete records, when all that is wrong is a torn last record that the
    head counts; else ``error`` (why the ledger does not verify) is raised."""
    lines = data[:cut].splitlines()
    if cut == len(data) or len(lines) != count - 1:
        raise error
    last = genesis(paths.dataset_id)
    if lines:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            last = str(json.loads(lines[-1]).get("hash"))
    try:
        return verify_chain(
            paths.dataset_id, paths.records, data[:cut], count=len(lines), last=last
        )
    except IntegrityError:
        raise error from None


def _recharge(
    paths: Paths,
    kept: list[LedgerRecord],
    data: bytes,
    cut: int,
    recharge: bool,
    lost: Step | None,
    policy: SitePolicy | None,
) -> Repair:
    prev = kept[-1] if kept else None
    step = lost or (prev.step if prev else None)
    planned = (
        f"steps={step.steps}, sample rate={step.sample_rate:g}, noise "
        f"multiplier={step.noise_multiplier:g}"
        if step
        else "give it with --steps, --sample-rate and --noise-multiplier"
    )
    number = len(kept) + 1
    if not recharge:
        raise IntegrityError(
            f"{paths.records}: record {number}, the last one its head counts, is "
            "torn (lost on disk after it was committed); its round was trained and "
            "may have been sent, so it cannot just be dropped. `fedvault client "
            "ledger repair --recharge` replaces it by a recovery record charging "
            f"that round again at its planned cost ({planned})"
        )
    if step is None:
        raise ConfigError(
            f"ledger repair --recharge: no record before {number}; {planned}"
        )
    delta = prev.delta if prev else (policy.delta if policy else None)
    accountant = prev.accountant if prev else (policy.accountant if policy else None)
    if delta is None or accountant is None:
        raise ConfigError("ledger repair --recharge: give --policy (delta, accountant)")
    history = [*(r.step for r in kept), step]
    run_id, round_ = (prev.run_id, prev.round + 1) if prev else ("recovered", 0)
    clip = prev.max_grad_norm if prev else 1.0
    check_new(run_id, round_, step, clip, NO_UPDATE)
    body: dict[str, Any] = {
        "seq": len(kept),
        "dataset_id": paths.dataset_id,
        "run_id": run_id,
        "round": round_,
        "steps": step.steps,
        "sample_rate": float(step.sample_rate),
        "noise_multiplier": float(step.noise_multiplier),
        "max_grad_norm": clip,
        "delta": delta,
        "accountant": accountant,
        "epsilon": epsilon_spent(history, delta=delta, accountant=accountant),
        "update_sha256": NO_UPDATE,
        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
        "prev_hash": prev.hash if prev else genesis(paths.dataset_id),
    }
    record, line = seal(body)
    _truncate(paths, cut)
    files.append_line(paths, line)
    files.write_head(paths, record.seq + 1, record.hash)
    logger.warning("ledger %s: record %d recharged", paths.dataset_id, number)
    return Repair(
        "recharged",
        f"record {number} was torn after it was committed; replaced by a recovery "
        f"record charging its round again ({planned}): lifetime epsilon "
        f"{record.epsilon:.4f}. An anchor that counts record {number} no longer "
        "matches it: give your DPO a new one (fedvault client ledger anchor)",
        record,
    )


def _truncate(paths: Paths, size: int) -> None:
    with paths.records.open("r+b") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())
