"""The wire protocol between the coordinator and its sites, in one place.

The coordinator and the sites never import each other; every name they must agree
on lives here, so that no record key, metric name or message kind is spelled in two
modules. A round, as the records travel (see docs/architecture.md):

==========================  ==========================================================
message (kind)              content
==========================  ==========================================================
stats query (``query.stats``)   coordinator -> site: empty
stats reply                 ``site`` ConfigRecord: :class:`SiteStats` (and
                            ``decline`` when the site refuses the run)
train (``train``)           ``arrays`` (global model), ``config``: :data:`PREPROCESSING`
                            and Flower's :data:`SERVER_ROUND` (FedProx adds
                            :data:`PROXIMAL_MU`, client-level DP its clipping norm)
train reply                 ``arrays`` (weights, or an int8 packed update) and
                            ``metrics``: :class:`TrainMetrics` (with DP, the site's
                            own :class:`DpFigures`); or ``decline``: :class:`Decline`
evaluate (``evaluate``)     ``arrays``, ``config``: :data:`PREPROCESSING`
evaluate reply              ``metrics``: :class:`EvaluateMetrics`; or ``decline``
==========================  ==========================================================

Every reply a site makes for a run (not a decline, nor a SecAgg+ protocol stage)
also carries its privacy ledger's head: a :data:`LEDGER_HEAD` ConfigRecord
(:class:`LedgerHead`).

Special replies are Flower ``Error`` messages: a site that refuses a round's protocol
answers with a reason starting with :data:`MISMATCH_PREFIX` (the coordinator fails
the run loudly instead of carrying on without the site); in a SecAgg+ round, whose
replies must be protocol messages, a decline travels as an error whose reason is
:meth:`Decline.to_reason`.

With client-level DP every reply carries the constant weight :data:`CLIENT_WEIGHT`
(Flower's accountant needs equal weights). The SecAgg+ quantization settings bound
what a site may put in the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.app.message_type import MessageType

# the decline's wire names, re-exported: every wire name can be read here
from fedvault.common.decline import DECLINE as DECLINE
from fedvault.common.decline import DECLINE_PREFIX as DECLINE_PREFIX
from fedvault.common.decline import DECLINE_REASONS as DECLINE_REASONS
from fedvault.common.decline import Decline as Decline
from fedvault.common.decline import DeclineReason as DeclineReason

# the ledger head a site publishes with its replies, re-exported likewise
from fedvault.common.ledger_head import LEDGER_HEAD as LEDGER_HEAD
from fedvault.common.ledger_head import LedgerHead as LedgerHead
from fedvault.common.privacy import Accountant
from fedvault.common.records import number, text

# -- message kinds ------------------------------------------------------------
STATS_ACTION = "stats"
STATS_MESSAGE = f"{MessageType.QUERY}.{STATS_ACTION}"
# coordinator -> a site that is connected but not in the run: ``notice`` ConfigRecord
# with ``text`` (why, and when it takes part); the site logs it and answers empty.
NOTICE_ACTION = "notice"
NOTICE_MESSAGE = f"{MessageType.QUERY}.{NOTICE_ACTION}"
NOTICE = "notice"

# -- record keys --------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the global model, or a site's weights
CONFIG = "config"  # ConfigRecord of a train / evaluate message
METRICS = "metrics"  # MetricRecord of a reply
SITE = "site"  # ConfigRecord of a stats reply

# -- config keys of train / evaluate messages ---------------------------------
PREPROCESSING = "preprocessing"  # the federation's preprocessing, as JSON
SERVER_ROUND = "server-round"  # set by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
# A SecAgg+ round's array names, in order (JSON list): Flower's legacy messages
# carry unnamed arrays.
ARRAY_KEYS = "fedvault-array-keys"

# -- run-config keys the sites read (besides TrainingConfig's) ---------------------
RUN_TARGET = "target"  # the label column
RUN_KEY = "run-key"  # names the run in a site's ledger across coordinator restarts
RUN_CLIENT_THREADS = "client-threads"  # torch threads per site process (0: default)
# the feature columns the run trains on, a JSON list of names ("[]": every column);
# TrainingConfig's ``features``, which Flower's scalar run config cannot hold as a list
RUN_FEATURES = "features"
# A policy decline whose detail starts so: the site holds the run for its operator's
# approval; the coordinator asks it again until it answers or its wait ends.
HELD_PREFIX = "held:"
# the coordinator's fedvault version: a site with another major.minor declines the run
RUN_FEDVAULT_VERSION = "fedvault-version"
# In simulation Flower gives a site only its partition id: the launcher passes each
# simulated site's own settings as run-config keys ``site.<partition-id>.<key>``.
SIMULATED_SITE_PREFIX = "site."


def simulated_site_key(partition_id: int, key: str) -> str:
    """The run-config key of setting ``key`` of simulated site ``partition_id``."""
    return f"{SIMULATED_SITE_PREFIX}{partition_id}.{key}"


# -- metric names -------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # the weight FedAvg aggregates by
# Evaluation metrics: classification, and regression (in the target's own units)
LOSS = "loss"
ACCURACY = "accuracy"
MAE = "mae"
RMSE = "rmse"
R2 = "r2"
REGRESSION_METRICS = (MAE, RMSE, R2)


def final_keys(task: str) -> tuple[str, ...]:
    """The figures a run summary repeats from its last round: on the test split,
    and (``val_``) on the sites' validation rows."""
    if task == "regression":
        return (*REGRESSION_METRICS, LOSS, *(f"val_{k}" for k in REGRESSION_METRICS))
    return (ACCURACY, "auc", LOSS, f"val_{ACCURACY}")


CLIENT_WEIGHT = "client-weight"  # constant 1.0 under client-level DP

# -- errors -------------------------------------------------------------------
MISMATCH_PREFIX = "fedvault-protocol-mismatch:"

# SecAgg+ quantization (Flower's defaults): every value a site masks is clipped to
# +-SECAGG_CLIPPING_RANGE and quantized to SECAGG_QUANTIZATION_RANGE levels; weights
# must stay <= the round's max weight.
SECAGG_CLIPPING_RANGE = 8.0
SECAGG_QUANTIZATION_RANGE = 2**22
SECAGG_MODULUS_RANGE = 2**32
SECAGG_MAX_WEIGHT = 1000.0

_Metric = int | float | list[int] | list[float]  # a MetricRecord value


def quantization_step(
    clipping_range: float = SECAGG_CLIPPING_RANGE,
    quantization_range: int = SECAGG_QUANTIZATION_RANGE,
) -> float:
    """Width of one SecAgg+ quantization level; stochastic rounding moves each
    value by less than one step."""
    return 2 * clipping_range / quantization_range


# -- metrics ------------------------------------------------------------------
# A site's accountant travels as a number (a MetricRecord holds numbers only).
ACCOUNTANT_CODES: dict[Accountant, int] = {"rdp": 1, "prv": 2}


@dataclass(frozen=True, kw_only=True)
class DpFigures:
    """A site's own privacy figures after a DP-SGD round, from its accountant.

    ``epsilon``: this run; ``epsilon_lifetime``: every run on the dataset;
    ``epsilon_budget``: the site's lifetime budget; all at the site's own ``delta``
    with the site's own ``accountant`` (its policy's, whatever the run asked for).
    ``noise_from_run_seed``: the round's noise derives from the run's seed
    (simulation: reproducible by whoever holds the seed), not from the OS's entropy.
    """

    epsilon: float
    epsilon_lifetime: float
    epsilon_budget: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    accountant: Accountant = "rdp"
    noise_from_run_seed: bool = False

    def values(self) -> dict[str, float]:
        """The figures by wire name, as numbers."""
        values = {
            _key(f.name): float(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("accountant", "noise_from_run_seed")
        }
        values[ACCOUNTANT_CODE] = float(ACCOUNTANT_CODES[self.accountant])
        values[NOISE_FROM_RUN_SEED] = float(self.noise_from_run_seed)
        return values

    @classmethod
    def from_values(cls, record: Mapping[str, object]) -> DpFigures:
        """Read the figures; :class:`ValueError` names a missing, non-numeric or
        unknown value."""
        numbers = {k.replace("-", "_"): number(record, k) for k in _DP_NUMBERS}
        code = number(record, ACCOUNTANT_CODE)
        names = [a for a, c in ACCOUNTANT_CODES.items() if c == code]
        if not names:
            raise ValueError(f"{ACCOUNTANT_CODE}: unknown accountant code {code:g}")
        seeded = number(record, NOISE_FROM_RUN_SEED)
        if seeded not in (0.0, 1.0):
            raise ValueError(f"{NOISE_FROM_RUN_SEED}: must be 0 or 1, got {seeded:g}")
        return cls(**numbers, accountant=names[0], noise_from_run_seed=seeded == 1.0)


def _key(name: str) -> str:
    return name.replace("_", "-")


ACCOUNTANT_CODE = "accountant-code"
NOISE_FROM_RUN_SEED = "noise-from-run-seed"
_DP_NUMBERS = tuple(
    _key(f.name)
    for f in fields(DpFigures)
    if f.name not in ("accountant", "noise_from_run_seed")
)
_DP_KEYS = (*_DP_NUMBERS, ACCOUNTANT_CODE, NOISE_FROM_RUN_SEED)


@dataclass(frozen=True, kw_only=True)
class TrainMetrics:
    """The metrics of a training reply (``metrics`` record).

    ``num_examples``: with DP, the row count the site's summary released (noisy),
    never the exact one; no training loss (it is not a DP release); ``steps``:
    optimizer steps run; ``dp``: the site's privacy figures (DP-SGD runs only);
    ``client_weight``: add :data:`CLIENT_WEIGHT` = 1 (client-level DP runs).
    """

    num_examples: int
    steps: int
    dp: DpFigures | None = None
    client_weight: bool = False

    def values(self) -> dict[str, float]:
        """The metrics by wire name."""
        values = {
            NUM_EXAMPLES: float(self.num_examples),
            "steps": float(self.steps),
        }
        if self.dp is not None:
            values |= self.dp.values()
        if self.client_weight:
            values[CLIENT_WEIGHT] = 1.0
        return values

    def to_record(self) -> MetricRecord:
        values: dict[str, _Metric] = dict(self.values())
        values[NUM_EXAMPLES] = self.num_examples
        values["steps"] = self.steps
        return MetricRecord(values)

    @staticmethod
    def keys(*, dp: bool, client_weight: bool) -> set[str]:
        """The metric names a training reply of such a run holds, exactly."""
        keys = {NUM_EXAMPLES, "steps"}
        if dp:
            keys |= set(_DP_KEYS)
        if client_weight:
            keys.add(CLIENT_WEIGHT)
        return keys

    @classmethod
    def from_record(cls, record: Mapping[str, object], *, dp: bool) -> TrainMetrics:
        """Read a training reply's metrics; :class:`ValueError` names a missing or
        non-numeric key."""
        return cls(
            num_examples=int(number(record, NUM_EXAMPLES)),
            steps=int(number(record, "steps")),
            dp=DpFigures.from_values(record) if dp else None,
            client_weight=CLIENT_WEIGHT in record,
        )


@dataclass(frozen=True, kw_only=True)
class EvaluateMetrics:
    """The metrics of an evaluate reply: the global model on the site's
    validation rows. A classification reply holds ``accuracy`` (in [0, 1]); a
    regression run's reply holds :data:`MAE`, :data:`RMSE` and :data:`R2`
    (``regression``) in its place. With DP the accuracy is the ratio of noisy,
    accounted counts and a regression run releases no validation metrics (its
    sites decline); no validation loss is released."""

    num_examples: int
    accuracy: float = 0.0
    client_weight: bool = False
    regression: Mapping[str, float] | None = None

    def to_record(self) -> MetricRecord:
        values: dict[str, _Metric] = {NUM_EXAMPLES: self.num_examples}
        if self.regression is None:
            values[ACCURACY] = self.accuracy
        else:
            values |= {k: float(self.regression[k]) for k in REGRESSION_METRICS}
        if self.client_weight:
            values[CLIENT_WEIGHT] = 1.0
        return MetricRecord(dict(values))

    @staticmethod
    def keys(*, client_weight: bool, regression: bool = False) -> set[str]:
        """The metric names an evaluate reply of such a run holds, exactly."""
        keys = {NUM_EXAMPLES}
        keys |= set(REGRESSION_METRICS) if regression else {ACCURACY}
        if client_weight:
            keys.add(CLIENT_WEIGHT)
        return keys


def metrics_problem(record: Mapping[str, object], keys: set[str]) -> str | None:
    """Why a reply's metrics cannot be used, or None: they must hold exactly
    ``keys``, all finite numbers, with a positive :data:`NUM_EXAMPLES`."""
    if set(record) != keys:
        return f"metrics {sorted(record)} differ from the expected {sorted(keys)}"
    try:
        values = [number(record, k) for k in keys]
    except ValueError as exc:
        return str(exc)
    if not all(math.isfinite(v) for v in values):
        return "non-finite metric values"
    if number(record, NUM_EXAMPLES) <= 0:
        return f"{NUM_EXAMPLES} must be positive"
    return None


# -- stats --------------------------------------------------------------------
@dataclass(frozen=True)
class SiteStats:
    """A site's answer to the stats query: its name and either its summary
    (``fedvault.common.wire`` bytes), or why it cannot train (``reason``), or its
    typed refusal of the whole run (``decline``: the run breaks its policy)."""

    name: str
    summary: bytes | None = None
    reason: str | None = None
    decline: Decline | None = None

    def to_content(self) -> RecordDict:
        record = ConfigRecord({"site": self.name, "usable": self.summary is not None})
        content = RecordDict({SITE: record})
        if self.summary is not None:
            record["summary"] = self.summary
        elif self.decline is not None:
            decline = self.decline
            record["reason"] = f"declined ({decline.reason}): {decline.detail}"
            content[DECLINE] = self.decline.to_content()[DECLINE]
        else:
            record["reason"] = self.reason or "unusable"
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> SiteStats:
        """Read a stats reply; :class:`ValueError` says what is malformed."""
        if SITE not in content.config_records:
            raise ValueError(f"message has no ConfigRecord {SITE!r}")
        record = content.config_records[SITE]
        name = text(record, "site")
        if not record.get("usable"):
            decline = Decline.from_content(content)
            return cls(name, reason=text(record, "reason"), decline=decline)
        summary = record.get("summary")
        if not isinstance(summary, bytes):
            raise ValueError("summary is not bytes")
        return cls(name, summary=summary)
