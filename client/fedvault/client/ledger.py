"""The site's privacy ledger: every DP-SGD round it ever trained on a dataset.

One ledger per site and dataset, in the site's state folder (``STATE/ledger/``; the
files are described in :mod:`fedvault.client._ledger_files`). Each record holds run
id, round, steps, sample rate, noise multiplier, clipping norm, the epsilon after
that round at delta (computed by the accountant over the whole history, never typed
in), the SHA-256 of the update the site sent, the UTC time, and ``prev_hash``, the
hash of the record before it; a record's ``hash`` is the SHA-256 of its canonical
JSON (:mod:`fedvault.client._ledger_format`). Verification re-walks the chain and
raises :class:`IntegrityError` on any edit, deletion, reordering or truncation; the
head file catches the deletion of the last records.

Limits (docs/ledger.md): this is tamper *evidence*. The head carries an HMAC under
the site's key (STATE/accountant.key, 0600), so rewriting a record and recomputing
the chain and head fails unless the key was read too; an exported anchor
(:func:`anchor`, ``ledger verify --anchor``) held by the DPO or the coordinator
catches even the site's own operator rewriting history before it. Deleting the
whole folder starts the budget again from zero, which only an anchor reveals.

Per round: open (verifies; fails closed) -> check_round -> train -> append -> only
then send the update. A crash between append and sending over-counts: the safe side.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedvault.client import _ledger_files as files
from fedvault.client import _ledger_repair
from fedvault.client._ledger_files import Paths
from fedvault.client._ledger_format import (
    LedgerRecord,
    check_new,
    genesis,
    seal,
)
from fedvault.client._ledger_repair import Repair
from fedvault.client.policy import Decline, SitePolicy, check_dataset_id, check_matches
from fedvault.common.errors import BudgetExceededError, ConfigError, IntegrityError
from fedvault.common.privacy import ACCOUNTANTS, Accountant, Step, epsilon_spent

__all__ = [
    "LedgerRecord",
    "PrivacyLedger",
    "Repair",
    "anchor",
    "check_anchor",
    "repair_ledger",
    "repair_torn_tail",
    "verify_ledger",
]

logger = logging.getLogger(__name__)


def _existing(state_dir: Path, dataset_id: str) -> Paths:
    paths = Paths.of(state_dir, check_dataset_id(dataset_id, key="dataset"))
    if not paths.exist():
        raise ConfigError(f"no ledger for dataset {dataset_id!r} under {state_dir}")
    return paths


def verify_ledger(state_dir: Path, dataset_id: str) -> list[LedgerRecord]:
    """Read and verify the ledger of ``dataset_id``; return its records.

    Raises :class:`ConfigError` when there is no ledger at all and
    :class:`IntegrityError` when it was edited, reordered, truncated or cut short.
    """
    paths = _existing(state_dir, dataset_id)
    with files.locked(paths):
        return files.load(paths)


def anchor(state_dir: Path, dataset_id: str) -> dict[str, Any]:
    """The ledger's anchor: its dataset, record count and last hash, to be kept
    outside the site (by the DPO, or the coordinator) and checked later with
    :func:`check_anchor`. Raises as :func:`verify_ledger`."""
    records = verify_ledger(state_dir, dataset_id)
    return {
        "dataset_id": dataset_id,
        "count": len(records),
        "hash": records[-1].hash if records else genesis(dataset_id),
        "epsilon": records[-1].epsilon if records else 0.0,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def check_anchor(
    state_dir: Path, dataset_id: str, kept: dict[str, Any]
) -> list[LedgerRecord]:
    """The ledger's records, if they verify and still hold the anchored record
    ``kept`` (from :func:`anchor`) unchanged.

    Raises:
        ConfigError: ``kept`` is not an anchor of this dataset.
        IntegrityError: the ledger fails verification, is shorter than the anchor
            or its anchored record differs (history rewritten or started over).
    """
    count, last = kept.get("count"), kept.get("hash")
    if (
        kept.get("dataset_id") != dataset_id
        or not isinstance(count, int)
        or isinstance(count, bool)
        or count < 0
        or not isinstance(last, str)
    ):
        raise ConfigError(f"anchor: not an anchor of dataset {dataset_id!r}")
    records = verify_ledger(state_dir, dataset_id)
    when = kept.get("time", "its time")
    if count > len(records):
        raise IntegrityError(
            f"ledger of {dataset_id!r} holds {len(records)} records, the anchor of "
            f"{when} counts {count}: records deleted or the ledger started over"
        )
    at = records[count - 1].hash if count else genesis(dataset_id)
    if not hmac.compare_digest(at, last):
        raise IntegrityError(
            f"ledger of {dataset_id!r}: record {count} differs from the anchor of "
            f"{when}: its history was rewritten"
        )
    return records


def repair_torn_tail(state_dir: Path, dataset_id: str) -> bool:
    """Drop an incomplete last line left by a crash mid-append; True if there was one.

    Safe because an append that did not return was never followed by sending its
    update. The complete records must verify against the head first, else
    :class:`IntegrityError` is raised and nothing is changed (it explains when the
    torn line is a record the head counts: :func:`repair_ledger` with ``recharge``
    recovers); :class:`ConfigError` when there is no ledger.
    """
    return repair_ledger(state_dir, dataset_id).action == "dropped-tail"


def repair_ledger(
    state_dir: Path,
    dataset_id: str,
    *,
    recharge: bool = False,
    lost: Step | None = None,
    policy: SitePolicy | None = None,
    accept_unkeyed_head: bool = False,
) -> Repair:
    """Repair the ledger of ``dataset_id`` after a crash, never lowering what it
    says was spent (:mod:`fedvault.client._ledger_repair`); what was done, in words.

    Raises:
        IntegrityError: more than a torn tail is wrong, or a committed record is
            torn and ``recharge`` was not given (the message says what to do).
        ConfigError: no ledger, or ``recharge`` without a cost to charge.
    """
    paths = _existing(state_dir, dataset_id)
    return _ledger_repair.repair(
        paths,
        recharge=recharge,
        lost=lost,
        policy=policy,
        accept_unkeyed_head=accept_unkeyed_head,
    )


class PrivacyLedger:
    """Append-only, hash-chained record of one site's DP-SGD rounds on one dataset.

    Verified when opened (fail closed) and again, under a lock, before each append.
    """

    def __init__(
        self,
        paths: Paths,
        records: list[LedgerRecord],
        *,
        delta: float,
        accountant: Accountant,
    ) -> None:
        """Use :meth:`open`."""
        self._paths = paths
        self._records = records
        self._epsilon: tuple[int, float] | None = None
        self.dataset_id = paths.dataset_id
        self.delta = delta
        self.accountant: Accountant = accountant

    @classmethod
    def open(
        cls,
        state_dir: Path,
        dataset_id: str,
        *,
        delta: float,
        accountant: Accountant,
        create: bool = True,
    ) -> PrivacyLedger:
        """Open the ledger of ``dataset_id`` (starting an empty one if ``create``).

        Raises :class:`IntegrityError` if it fails verification (a site must not
        train on a ledger it cannot trust), :class:`ConfigError` for an invalid
        argument or, without ``create``, a missing ledger.
        """
        check_dataset_id(dataset_id, key="dataset")
        if not (math.isfinite(delta) and 0 < delta < 1):
            raise ConfigError(f"delta: must be in (0, 1), got {delta}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"accountant: unknown {accountant!r}; use one of {ACCOUNTANTS}"
            )
        if create:
            paths = Paths.of(state_dir, dataset_id)
            files.initialise(paths)
        else:
            paths = _existing(state_dir, dataset_id)
        with files.locked(paths):
            records = files.load(paths)
        return cls(paths, records, delta=delta, accountant=accountant)

    @classmethod
    def for_policy(
        cls, state_dir: Path, policy: SitePolicy, *, create: bool = True
    ) -> PrivacyLedger:
        """The ledger of the policy's dataset, at the policy's delta and accountant."""
        return cls.open(
            state_dir,
            policy.dataset_id,
            delta=policy.delta,
            accountant=policy.accountant,
            create=create,
        )

    @property
    def path(self) -> Path:
        return self._paths.records

    def records(self) -> list[LedgerRecord]:
        return list(self._records)

    def history(self) -> list[Step]:
        """Every DP-SGD step recorded, in order: the accountant's whole history."""
        return [r.step for r in self._records]

    def epsilon(self) -> float:
        """Lifetime epsilon at the ledger's delta, over all recorded runs."""
        count = len(self._records)
        if self._epsilon is None or self._epsilon[0] != count:
            self._epsilon = (count, self._compose(self.history()))
        return self._epsilon[1]

    def projected_epsilon(
        self, planned: Step, *, coarse: bool = False, extra: Sequence[Step] = ()
    ) -> float:
        """Lifetime epsilon if the steps ``planned`` (and other releases ``extra``)
        came next (``coarse``: a cheaper upper bound, for narrowing searches
        only)."""
        return epsilon_spent(
            [*self.history(), *extra, planned],
            delta=self.delta,
            accountant=self.accountant,
            coarse=coarse,
        )

    def planned_noise(self, run_id: str) -> float | None:
        """The noise multiplier ``run_id`` already trained with here, if any.

        A site plans sigma once per run and reuses it after restarts. Before a run's
        first record, ``policy.plan_run_noise`` on the same history gives the same
        sigma.
        """
        return next(
            (r.noise_multiplier for r in self._records if r.run_id == run_id), None
        )

    def check_round(self, planned: Step, policy: SitePolicy) -> Decline | None:
        """``None`` if the planned round may train, else why not.

        It may train when its noise is at least the policy's minimum and lifetime
        epsilon after it stays at or below ``epsilon-max``.
        """
        self._check_policy(policy)
        if planned.noise_multiplier < policy.min_noise_multiplier:
            return Decline(
                "policy",
                f"noise multiplier {planned.noise_multiplier:g} is below the site's "
                f"minimum {policy.min_noise_multiplier:g}",
            )
        projected = self.projected_epsilon(planned)
        if projected > policy.epsilon_max:
            return Decline(
                "budget",
                f"the round would bring lifetime epsilon on {self.dataset_id!r} to "
                f"{projected:.4f} > budget {policy.epsilon_max:g} at delta="
                f"{policy.delta:g} (spent {self.epsilon():.4f})",
            )
        return None

    def append(
        self,
        run_id: str,
        round: int,
        step: Step,
        max_grad_norm: float,
        update_hash: str,
        *,
        policy: SitePolicy | None = None,
        now: datetime | None = None,
    ) -> LedgerRecord:
        """Record one trained round durably; call it *before* sending the update.

        The file is re-read and verified under the lock, so concurrent runs on one
        dataset chain correctly. With ``policy``, raises :class:`BudgetExceededError`
        and records nothing if the round would pass ``epsilon-max`` (another run may
        have spent budget since ``check_round``): then do not send the update.
        """
        if policy is not None:
            self._check_policy(policy)
        check_new(run_id, round, step, max_grad_norm, update_hash)
        with files.locked(self._paths):
            records = files.load(self._paths)
            epsilon = self._compose([*(r.step for r in records), step])
            if policy is not None and epsilon > policy.epsilon_max:
                raise BudgetExceededError(
                    f"round {round} of run {run_id!r} would bring lifetime epsilon to "
                    f"{epsilon:.4f} > budget {policy.epsilon_max:g}; not recorded"
                )
            body: dict[str, Any] = {
                "seq": len(records),
                "dataset_id": self.dataset_id,
                "run_id": run_id,
                "round": round,
                "steps": step.steps,
                "sample_rate": float(step.sample_rate),
                "noise_multiplier": float(step.noise_multiplier),
                "max_grad_norm": float(max_grad_norm),
                "delta": float(self.delta),
                "accountant": self.accountant,
                "epsilon": epsilon,
                "update_sha256": update_hash,
                "time": (now or datetime.now(UTC))
                .astimezone(UTC)
                .isoformat(timespec="microseconds"),
                "prev_hash": records[-1].hash if records else genesis(self.dataset_id),
            }
            record, line = seal(body)
            files.append_line(self._paths, line)
            files.write_head(self._paths, record.seq + 1, record.hash)
        self._records = [*records, record]
        logger.info("ledger %s: round %d recorded", self.dataset_id, round)
        return record

    def verify(self) -> None:
        """Re-read the ledger from disk; IntegrityError if it no longer verifies or
        a record seen when it was opened has changed."""
        with files.locked(self._paths):
            records = files.load(self._paths)
        seen = [r.hash for r in self._records]
        if [r.hash for r in records[: len(seen)]] != seen:
            raise IntegrityError(f"{self._paths.records}: records changed since opened")
        self._records = records

    def _compose(self, history: Sequence[Step]) -> float:
        return epsilon_spent(history, delta=self.delta, accountant=self.accountant)

    def _check_policy(self, policy: SitePolicy) -> None:
        check_matches(policy, self)
