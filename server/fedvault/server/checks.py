"""What the coordinator checks before it aggregates or releases anything.

- :func:`check_reply` / :func:`check_update`: a site's reply is well formed (the
  update's names, shapes and finite values; exactly the expected metrics);
- :func:`expected_metrics`: the metrics a run's replies must carry;
- :func:`norm_bound`: the largest update norm a round accepts, set by the honest
  majority of its replies (a hostile site cannot move it);
- :func:`release_problem`: why a round's aggregate must not be released under
  client-level DP or secure aggregation, even though enough sites answered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from fedvault.common.compression import PACKED_KEY, PACKED_TYPE, dequantize, unpack
from fedvault.common.config import TrainingConfig
from fedvault.common.protocol import (
    ARRAYS,
    METRICS,
    EvaluateMetrics,
    TrainMetrics,
    metrics_problem,
)
from fedvault.common.records import array_record, metric_record

# The metrics of a plain (non-DP, no client-level DP) training reply.
TRAIN_METRICS = TrainMetrics.keys(dp=False, client_weight=False)


def expected_metrics(training: TrainingConfig, *, train: bool) -> set[str]:
    """Metric names every training (or evaluation) reply of the run must hold."""
    weighted = training.client_dp != "off"
    if not train:
        return EvaluateMetrics.keys(
            client_weight=weighted, regression=training.task == "regression"
        )
    keys = TrainMetrics.keys(dp=training.dp, client_weight=weighted)
    if training.client_dp == "client-adaptive":
        keys.add(KEY_NORM_BIT)  # Flower's adaptive clipping mod adds it
    return keys


def check_reply(
    content: RecordDict, reference: dict[str, np.ndarray] | None, keys: set[str]
) -> str | None:
    """Why a reply cannot be aggregated, or None. Checks the update (if training)
    and that metrics hold exactly ``keys``, all finite, with positive num-examples."""
    try:
        if reference is not None:
            problem = check_update(array_record(content, ARRAYS), reference)
            if problem is not None:
                return problem
        metrics = metric_record(content, METRICS)
    except ValueError as exc:
        return str(exc)
    return metrics_problem(metrics, keys)


def check_update(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> str | None:
    """Why an update cannot be aggregated (keys, shapes, non-finite values), or None."""
    if set(arrays.keys()) != set(reference):
        return "parameter names differ from the global model"
    for key, array in arrays.items():
        try:
            value = array.numpy()
        except Exception as exc:
            return f"{key}: not a readable array ({type(exc).__name__})"
        if not isinstance(value, np.ndarray) or not np.issubdtype(
            value.dtype, np.floating
        ):
            return f"{key}: not an array of floating-point numbers"
        if value.shape != reference[key].shape:
            return f"{key}: shape {value.shape} != {reference[key].shape}"
        if not np.all(np.isfinite(value)):
            return f"{key}: NaN or infinite values"
    return None


# A site's update may be at most NORM_FACTOR times the lower median of the round's
# update norms (distance from the global model, L2 over every parameter). Honest
# DP-SGD updates of one round differ by a small factor (site sizes, noise); a scaled
# or extreme update (x1e30, 3e38) is far outside. NORM_FLOOR keeps a round whose
# updates are all tiny from rejecting ordinary ones; NORM_CEILING holds even when
# most sites are hostile (no model fedvault trains moves that far in one round).
NORM_FACTOR = 25.0
NORM_FLOOR = 1e-3
NORM_CEILING = 1e6


def update_norm(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over every parameter, in float64 (inf when
    it overflows). ``arrays`` must have passed :func:`check_update`."""
    total = 0.0
    for key, array in arrays.items():
        delta = array.numpy().astype(np.float64) - reference[key]
        total += float(np.sum(np.square(delta)))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def norm_bound(norms: list[float]) -> float:
    """The largest update norm a round accepts: :data:`NORM_FACTOR` times the lower
    median of ``norms``, within [:data:`NORM_FLOOR`, :data:`NORM_CEILING`]. With
    three or more replies one site alone cannot raise it; with two, the smaller
    sets it."""
    if not norms:
        return NORM_CEILING
    ordered = sorted(norms)
    lower_median = ordered[(len(ordered) - 1) // 2]
    return min(max(NORM_FACTOR * lower_median, NORM_FLOOR), NORM_CEILING)


def release_problem(
    training: TrainingConfig,
    *,
    sampled: int,
    usable: int,
    summed: int | None,
) -> str | None:
    """Why the round's aggregate must not be released, or None.

    ``sampled``: sites the strategy configured; ``usable``: replies fit for
    aggregation; ``summed``: sites whose masked update SecAgg+ summed (None for a
    plain round).
    """
    if summed is not None and summed > usable:
        return (
            f"secure aggregation: {summed - usable} site(s) whose masked update is in "
            "the sum sent a reply the coordinator rejected; the sum cannot be split, "
            "so the round is discarded"
        )
    if training.client_dp != "off" and usable < sampled:
        return (
            f"client-level DP: only {usable} of the {sampled} sampled sites "
            f"contributed; the noise (sigma*C/{sampled}) and Flower's accountant "
            f"assume exactly {sampled}, so an average over fewer would be released "
            "with less noise than accounted; nothing is released"
        )
    return None


def dequantize_replies(
    replies: Iterable[Message], reference: dict[str, np.ndarray]
) -> None:
    """Packed int8 updates back to float32 weights, in place, before any check: a
    reply that is not a well-formed packed update is left as sent and rejected by
    the checks (its arrays do not match the model)."""
    for reply in replies:
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            continue
        arrays = reply.content.array_records[ARRAYS]
        if set(arrays) != {PACKED_KEY} or arrays[PACKED_KEY].stype != PACKED_TYPE:
            continue
        sent = unpack(arrays[PACKED_KEY].data, reference)
        weights = None if sent is None else dequantize(sent, reference)
        if weights is not None:
            reply.content[ARRAYS] = ArrayRecord(
                torch_state_dict={k: torch.from_numpy(v) for k, v in weights.items()}
            )
