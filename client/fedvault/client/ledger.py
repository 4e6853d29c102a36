"""The site's privacy ledger: every DP-SGD round it ever trained on a dataset.

One ledger per site and dataset, in the site's state folder::

    STATE/ledger/DATASET.jsonl   one canonical JSON record per trained round
    STATE/ledger/DATASET.head    count and hash of the last record (replaced atomically)
    STATE/ledger/DATASET.lock    advisory lock serialising appends

Each record holds run id, round, steps, sample rate, noise multiplier, clipping norm,
the epsilon after that round at delta (computed by the accountant over the whole
history, never typed in), the SHA-256 of the update the site sent, the UTC time, and
``prev_hash``, the hash of the record before it; a record's ``hash`` is the SHA-256 of
its canonical JSON. Verification re-walks the chain and raises :class:`IntegrityError`
on any edit, deletion, reordering or truncation; the head file catches the deletion
of the last records.

Limits (docs/ledger.md): this is tamper *evidence* against accidental corruption and
casual edits, not protection against the site's operator, who can rewrite the whole
chain and head, or delete the folder (which starts the budget again from zero).

Per round: open (verifies; fails closed) -> check_round -> train -> append -> only
then send the update. A crash between append and sending over-counts: the safe side.
The module is longer than most because the file format and its verifier belong
together.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedvault.client.policy import Decline, SitePolicy, check_dataset_id, check_matches
from fedvault.common.errors import BudgetExceededError, ConfigError, IntegrityError
from fedvault.common.files import fsync_dir
from fedvault.common.privacy import ACCOUNTANTS, Accountant, Step, epsilon_spent

__all__ = ["LedgerRecord", "PrivacyLedger", "repair_torn_tail", "verify_ledger"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_DOMAIN = b"fedvault.ledger.v1\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerRecord:
    """One trained round, as stored (one JSON line, keys as these field names)."""

    seq: int
    dataset_id: str
    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: Accountant
    epsilon: float
    update_sha256: str
    time: str
    prev_hash: str
    hash: str

    @property
    def step(self) -> Step:
        return Step(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
        )


def _canonical(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(_DOMAIN + _canonical(body)).hexdigest()


def _genesis(dataset_id: str) -> str:
    return hashlib.sha256(_DOMAIN + b"genesis\n" + dataset_id.encode()).hexdigest()


# --- the files ------------------------------------------------------------------


@dataclass(frozen=True)
class _Paths:
    dataset_id: str
    records: Path
    head: Path
    lock: Path

    @classmethod
    def of(cls, state_dir: Path, dataset_id: str) -> _Paths:
        folder = state_dir / "ledger"
        return cls(
            dataset_id,
            folder / f"{dataset_id}.jsonl",
            folder / f"{dataset_id}.head",
            folder / f"{dataset_id}.lock",
        )

    def exist(self) -> bool:
        return self.records.exists() or self.head.exists()


def _write_head(paths: _Paths, count: int, last: str) -> None:
    head = {
        "version": FORMAT_VERSION,
        "dataset_id": paths.dataset_id,
        "count": count,
        "hash": last,
    }
    tmp = paths.head.with_suffix(".head.tmp")
    with tmp.open("wb") as handle:
        handle.write(_canonical(head) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, paths.head)
    fsync_dir(paths.head.parent)


@contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _initialise(paths: _Paths) -> None:
    """Create an empty ledger, unless one (or a part of one) is already there."""
    with _locked(paths):
        if paths.exist():
            return
        with paths.records.open("xb") as handle:
            os.fsync(handle.fileno())
        _write_head(paths, 0, _genesis(paths.dataset_id))


def _append_line(paths: _Paths, line: bytes) -> None:
    fd = os.open(paths.records, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading and verifying ------------------------------------------------------

# JSON type of each stored field (bool is excluded separately: it is an int).
_TYPES = {"int": int, "float": float, "str": str, "Accountant": str}
_FIELD_TYPES = {f.name: _TYPES[str(f.type)] for f in fields(LedgerRecord)}


def _parse_record(line: bytes, where: str) -> LedgerRecord:
    try:
        data: dict[str, Any] = json.loads(line)
    except ValueError:
        raise IntegrityError(f"{where}: not a JSON record") from None
    if not isinstance(data, dict) or set(data) != set(_FIELD_TYPES):
        raise IntegrityError(f"{where}: fields missing or added")
    for key, kind in _FIELD_TYPES.items():
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise IntegrityError(f"{where}: field {key!r} has the wrong type")
    if not (_HEX64.fullmatch(data["hash"]) and _HEX64.fullmatch(data["prev_hash"])):
        raise IntegrityError(f"{where}: malformed hash")
    if _canonical(data) != line:
        raise IntegrityError(f"{where}: not in canonical form (edited by hand?)")
    body = {k: v for k, v in data.items() if k != "hash"}
    if not hmac.compare_digest(_digest(body), data["hash"]):
        raise IntegrityError(f"{where}: hash mismatch (record edited)")
    return LedgerRecord(**data)


def _check_sane(record: LedgerRecord, where: str) -> None:
    ok = (
        record.steps >= 1
        and 0 < record.sample_rate <= 1
        and math.isfinite(record.noise_multiplier)
        and record.noise_multiplier > 0
        and math.isfinite(record.max_grad_norm)
        and record.max_grad_norm > 0
        and 0 < record.delta < 1
        and record.accountant in ACCOUNTANTS
        and math.isfinite(record.epsilon)
        and record.epsilon >= 0
        and bool(_HEX64.fullmatch(record.update_sha256))
    )
    if not ok:
        raise IntegrityError(f"{where}: values out of range")


def _read_head(paths: _Paths) -> tuple[int, str]:
    try:
        head = json.loads(paths.head.read_bytes())
        count, last = head["count"], head["hash"]
        valid = (
            head["version"] == FORMAT_VERSION
            and head["dataset_id"] == paths.dataset_id
            and isinstance(count, int)
            and count >= 0
            and isinstance(last, str)
            and bool(_HEX64.fullmatch(last))
        )
    except FileNotFoundError:
        raise IntegrityError(f"{paths.head}: head file missing") from None
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise IntegrityError(f"{paths.head}: head file unreadable or edited")
    return count, last


def _load(paths: _Paths) -> list[LedgerRecord]:
    """Every record, after verifying the chain and the head; else IntegrityError.

    Call it under :func:`_locked`, so that an append in progress is not mistaken for
    a torn line.
    """
    count, last = _read_head(paths)
    try:
        data = paths.records.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{paths.records}: ledger file missing") from None
    if data and not data.endswith(b"\n"):
        raise IntegrityError(
            f"{paths.records}: the last line is incomplete (an append was "
            "interrupted, or the file was truncated); nothing trains until it is "
            "repaired (fedvault client ledger repair)"
        )
    return _verify(paths, data, count, last)


def _verify(paths: _Paths, data: bytes, count: int, last: str) -> list[LedgerRecord]:
    dataset_id, source = paths.dataset_id, paths.records
    records: list[LedgerRecord] = []
    prev = _genesis(dataset_id)
    for number, line in enumerate(data.splitlines(), start=1):
        where = f"{source}: record {number}"
        record = _parse_record(line, where)
        _check_sane(record, where)
        if record.seq != number - 1 or record.dataset_id != dataset_id:
            raise IntegrityError(f"{where}: out of place (records reordered or moved)")
        if not hmac.compare_digest(record.prev_hash, prev):
            raise IntegrityError(
                f"{where}: chain broken (a record before it was deleted, edited or "
                "reordered)"
            )
        records.append(record)
        prev = record.hash
    at_head: str | None = None
    if count == 0:
        at_head = _genesis(dataset_id)
    elif count <= len(records):
        at_head = records[count - 1].hash
    # One record past the head is an append whose head update did not finish: it is
    # kept (counting it can only overstate epsilon) and the next append fixes the head.
    if (
        len(records) not in (count, count + 1)
        or at_head is None
        or not hmac.compare_digest(at_head, last)
    ):
        raise IntegrityError(
            f"{source}: holds {len(records)} records but its head file says {count} "
            "(records deleted, or the head file replaced)"
        )
    return records


def verify_ledger(state_dir: Path, dataset_id: str) -> list[LedgerRecord]:
    """Read and verify the ledger of ``dataset_id``; return its records.

    Raises :class:`ConfigError` when there is no ledger at all and
    :class:`IntegrityError` when it was edited, reordered, truncated or cut short.
    """
    paths = _Paths.of(state_dir, check_dataset_id(dataset_id, key="dataset"))
    if not paths.exist():
        raise ConfigError(f"no ledger for dataset {dataset_id!r} under {state_dir}")
    with _locked(paths):
        return _load(paths)


def repair_torn_tail(state_dir: Path, dataset_id: str) -> bool:
    """Drop an incomplete last line left by a crash mid-append; True if there was one.

    Safe because an append that did not return was never followed by sending its
    update. The complete records must verify against the head first, else
    :class:`IntegrityError` is raised and nothing is changed.
    """
    paths = _Paths.of(state_dir, check_dataset_id(dataset_id, key="dataset"))
    if not paths.exist():
        raise ConfigError(f"no ledger for dataset {dataset_id!r} under {state_dir}")
    with _locked(paths):
        count, last = _read_head(paths)
        try:
            data = paths.records.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{paths.records}: ledger file missing") from None
        cut = data.rfind(b"\n") + 1
        _verify(paths, data[:cut], count, last)
        if cut == len(data):
            return False
        with paths.records.open("r+b") as handle:
            handle.truncate(cut)
            os.fsync(handle.fileno())
    logger.warning("ledger %s: dropped an incomplete last line", dataset_id)
    return True


# --- the ledger -----------------------------------------------------------------


def _check_run(
    run_id: str, server_round: int, step: Step, clip: float, digest: str
) -> None:
    checks = {
        "run-id": isinstance(run_id, str) and 0 < len(run_id) <= 128,
        "round": isinstance(server_round, int) and server_round >= 0,
        "steps": isinstance(step.steps, int) and step.steps >= 1,
        "sample-rate": 0 < step.sample_rate <= 1,
        "noise-multiplier": math.isfinite(step.noise_multiplier)
        and step.noise_multiplier > 0,
        "max-grad-norm": math.isfinite(clip) and clip > 0,
        "update-hash": isinstance(digest, str) and bool(_HEX64.fullmatch(digest)),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"ledger record: invalid {key}")


class PrivacyLedger:
    """Append-only, hash-chained record of one site's DP-SGD rounds on one dataset.

    Verified when opened (fail closed) and again, under a lock, before each append.
    """

    def __init__(
        self,
        paths: _Paths,
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

        Raises :class:`IntegrityError` if it fails verification: a site must not
        train on a ledger it cannot trust.
        """
        check_dataset_id(dataset_id, key="dataset")
        if not (math.isfinite(delta) and 0 < delta < 1):
            raise ConfigError(f"delta: must be in (0, 1), got {delta}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"accountant: unknown {accountant!r}; use one of {ACCOUNTANTS}"
            )
        paths = _Paths.of(state_dir, dataset_id)
        if create:
            _initialise(paths)
        elif not paths.exist():
            raise ConfigError(f"no ledger for dataset {dataset_id!r} under {state_dir}")
        with _locked(paths):
            records = _load(paths)
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

    def projected_epsilon(self, extra: Step, *, coarse: bool = False) -> float:
        """Lifetime epsilon if the steps ``extra`` were trained next (``coarse``: a
        cheaper upper bound, for narrowing searches only)."""
        return epsilon_spent(
            [*self.history(), extra],
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
        _check_run(run_id, round, step, max_grad_norm, update_hash)
        with _locked(self._paths):
            records = _load(self._paths)
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
                "prev_hash": records[-1].hash if records else _genesis(self.dataset_id),
            }
            record = LedgerRecord(**body, hash=_digest(body))
            _append_line(self._paths, _canonical(asdict(record)) + b"\n")
            _write_head(self._paths, record.seq + 1, record.hash)
        self._records = [*records, record]
        logger.info("ledger %s: round %d recorded", self.dataset_id, round)
        return record

    def verify(self) -> None:
        """Re-read the ledger from disk; IntegrityError if it no longer verifies or
        a record seen when it was opened has changed."""
        with _locked(self._paths):
            records = _load(self._paths)
        seen = [r.hash for r in self._records]
        if [r.hash for r in records[: len(seen)]] != seen:
            raise IntegrityError(f"{self._paths.records}: records changed since opened")
        self._records = records

    def _compose(self, history: Sequence[Step]) -> float:
        return epsilon_spent(history, delta=self.delta, accountant=self.accountant)

    def _check_policy(self, policy: SitePolicy) -> None:
        check_matches(policy, self)
