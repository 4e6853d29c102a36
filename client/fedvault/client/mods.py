"""The site's gate on every message: its access log, client-level DP clipping and
SecAgg+.

:func:`privacy_mod` wraps every message the ClientApp handles: the reply is
recorded in the site's access log before it leaves
(:func:`fedvault.client.access_log.access_log_mod`, outermost, so that a refusal
below is logged too), and for training messages it applies exactly what the run's
settings ask for, refusing anything else:

- ``secagg`` on: the message must be a SecAgg+ stage (Flower's ``secaggplus_mod``
  then runs the protocol). At the masking stage the site trains through the same
  ``train`` handler, and masks ``weight * (local - global)``: its update never
  leaves in the clear. With client-level DP the update is clipped first (norm C,
  less the most SecAgg+ quantization can add) and the weight is 1.
- ``secagg`` off: a SecAgg+ stage is refused; with client-side clipping
  (``client-fixed``/``client-adaptive``) Flower's ``fixedclipping_mod`` or
  ``adaptiveclipping_mod`` clips the update, and the coordinator must have sent the
  clipping norm; without it, a message carrying a clipping norm is refused (the
  coordinator expects clipping the site would not do).

Refusals are Flower ``Error`` replies whose reason starts with
``fedvault.common.protocol.MISMATCH_PREFIX``: the coordinator fails the run on them
instead of carrying on without the site. A site's typed decline (budget, policy,
data) passes through unchanged in plain rounds, and travels as an ``Error`` with
its :meth:`~fedvault.common.protocol.Decline.to_reason` in a SecAgg+
round, whose replies must be protocol messages.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    clip_inputs_inplace,
    get_norm,
)

from fedvault.client.access_log import access_log_mod
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError, PrivacyError
from fedvault.common.protocol import (
    ARRAY_KEYS,
    ARRAYS,
    CONFIG,
    METRICS,
    MISMATCH_PREFIX,
    NUM_EXAMPLES,
    Decline,
    quantization_step,
)
from fedvault.common.records import array_record, metric_record, number

logger = logging.getLogger(__name__)


class _Declined(Exception):  # noqa: N818 - control flow, never escapes this module
    def __init__(self, reply: Message, decline: Decline) -> None:
        super().__init__("declined")
        self.reply, self.decline = reply, decline


def _raise_if_declined(reply: Message) -> Message:
    decline = None if reply.has_error() else Decline.from_content(reply.content)
    if decline is not None:
        raise _Declined(reply, decline)
    return reply


class _Mismatch(Exception):  # noqa: N818 - control flow, never escapes this module
    pass


def _clipping_mismatch(s: TrainingConfig, norm_sent: bool) -> str | None:
    if norm_sent == s.client_side_clipping:
        return None
    return (
        f"the run's client-dp is {s.client_dp!r} but the coordinator "
        f"{'sent' if norm_sent else 'did not send'} a clipping norm"
    )


def _refuse(msg: Message, detail: str) -> Message:
    logger.error("refusing a training message: %s", detail)
    reason = f"{MISMATCH_PREFIX} {detail}"
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)


def privacy_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Log every message and its reply in the site's access log; apply the run's
    client-level DP clipping and SecAgg+ to training messages."""

    def gate(message: Message, context: Context) -> Message:
        return _privacy_gate(message, context, call_next)

    return access_log_mod(msg, ctxt, gate)


def _privacy_gate(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    try:
        settings = TrainingConfig.from_run_config(ctxt.run_config)
    except ConfigError as exc:
        return _refuse(msg, f"invalid run config: {exc}")
    secure_stage = RECORD_KEY_CONFIGS in msg.content.config_records
    if settings.secagg and not secure_stage:
        return _refuse(
            msg,
            "the run asks for secure aggregation but the coordinator sent a plain "
            "training message; the site will not send its update in the clear",
        )
    if secure_stage and not settings.secagg:
        return _refuse(
            msg, "the coordinator runs SecAgg+ but the run does not ask for secagg"
        )
    if settings.secagg:
        return _secure_train(msg, ctxt, call_next, settings)
    return _plain_train(msg, ctxt, call_next, settings)


def _plain_train(
    msg: Message, ctxt: Context, call_next: ClientAppCallable, s: TrainingConfig
) -> Message:
    configs = list(msg.content.config_records.values())
    norm_sent = any(KEY_CLIPPING_NORM in record for record in configs)
    mismatch = _clipping_mismatch(s, norm_sent)
    if mismatch is not None:
        return _refuse(msg, mismatch)
    if not s.client_side_clipping:
        return call_next(msg, ctxt)
    clipping = (
        fixedclipping_mod if s.client_dp == "client-fixed" else adaptiveclipping_mod
    )

    def inner(message: Message, context: Context) -> Message:
        return _raise_if_declined(call_next(message, context))

    try:
        return clipping(msg, ctxt, inner)
    except _Declined as declined:
        return declined.reply


def _secure_train(
    msg: Message, ctxt: Context, call_next: ClientAppCallable, s: TrainingConfig
) -> Message:
    def masked_update(message: Message, context: Context) -> Message:
        return _legacy_train(message, context, call_next, s)

    try:
        return secaggplus_mod(msg, ctxt, masked_update)
    except _Mismatch as exc:
        return _refuse(msg, str(exc))
    except _Declined as declined:
        reason = declined.decline.to_reason()
        error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
        return Message(error, reply_to=msg)


def _legacy_train(
    msg: Message, ctxt: Context, call_next: ClientAppCallable, s: TrainingConfig
) -> Message:
    """The SecAgg+ masking stage: train on the legacy ``FitIns`` through the usual
    handler, and answer a legacy ``FitRes`` holding ``local - global``."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    mismatch = _clipping_mismatch(s, KEY_CLIPPING_NORM in config)
    if mismatch is not None:
        raise _Mismatch(mismatch)
    keys = json.loads(str(config.pop(ARRAY_KEYS)))
    current = parameters_to_ndarrays(fitins.parameters)
    arrays = ArrayRecord(
        array_dict={k: Array(v) for k, v in zip(keys, current, strict=True)}
    )
    train_config = ConfigRecord(dict(config.items()))
    msg.content = RecordDict({ARRAYS: arrays, CONFIG: train_config})
    reply = _raise_if_declined(call_next(msg, ctxt))
    local = array_record(reply.content, ARRAYS).to_numpy_ndarrays()
    update: NDArrays = [
        np.asarray(new, dtype=np.float64) - old
        for new, old in zip(local, current, strict=True)
    ]
    metrics = dict(metric_record(reply.content, METRICS))
    clip_range, max_weight = _state(ctxt, "clipping_range"), _state(ctxt, "max_weight")
    if s.client_dp == "client-fixed":
        step = quantization_step(clip_range, int(_state(ctxt, "target_range")))
        norm = _secure_clipping_norm(number(config, KEY_CLIPPING_NORM), update, step)
        clip_inputs_inplace(update, norm)
        weight = 1.0
    else:
        weight = min(number(metrics, NUM_EXAMPLES), max_weight)
    _check_range(update, weight / max_weight, clip_range)
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(update),
        num_examples=int(weight),
        metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _state(ctxt: Context, key: str) -> float:
    """A setting of this SecAgg+ round, as Flower's mod stored it at setup."""
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    value = None if state is None else state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrivacyError(f"SecAgg+ state has no {key!r}; setup stage missing")
    return float(value)


def _secure_clipping_norm(norm: float, update: NDArrays, step: float) -> float:
    """Clip so that the update stays within ``norm`` after SecAgg+ quantization,
    which moves each value by less than one ``step`` (weight 1)."""
    size = sum(int(a.size) for a in update)
    slack = step * math.sqrt(size)
    if norm <= slack:
        raise PrivacyError(
            f"client clipping norm {norm:g} is below SecAgg+ resolution {slack:.3g}"
        )
    return norm - slack


def _check_range(update: NDArrays, ratio: float, clip_range: float) -> None:
    """SecAgg+ clips every masked value to its range: refuse rather than bias."""
    if not math.isfinite(get_norm(update)):
        raise PrivacyError("update has non-finite values")
    largest = max((float(np.max(np.abs(a))) for a in update if a.size), default=0.0)
    if largest * ratio > clip_range:
        raise PrivacyError(
            f"update value {largest:.3g} x weight ratio {ratio:.3g} exceeds the "
            f"SecAgg+ range +-{clip_range:g}"
        )
