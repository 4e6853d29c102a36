"""How a site sends a trained round: the seed of its randomness, the update it
sends (weights or int8 codes), and the same update again for a round a restarted
coordinator asks twice (:func:`replay_round`: nothing new trained or spent)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedvault.client.budget import SiteBudget
from fedvault.client.site import SiteSettings
from fedvault.common.compression import pack, quantize
from fedvault.common.config import TrainingConfig
from fedvault.common.protocol import ARRAYS, METRICS, TrainMetrics
from fedvault.common.records import array_record, packed_record

logger = logging.getLogger(__name__)


def reply(msg: Message, arrays: ArrayRecord, metrics: MetricRecord) -> Message:
    """A training reply: the update and its metrics."""
    return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)


def round_seed(site: SiteSettings, seed: int, server_round: int, kind: str) -> int:
    """The seed of a round's randomness: Poisson sampling, DP noise, int8 rounding.

    In simulation it derives from the run's ``seed`` (same seed, same result). A
    deployed site draws it from the OS's entropy and never sends it: the run seed
    comes from the coordinator, and a coordinator able to replay a site's noise
    could subtract it from the update.
    """
    if not site.simulated:
        return secrets.randbits(63)
    text = f"{seed}/{site.name}/{server_round}/{kind}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % (2**63)


def update_of(
    msg: Message, model: nn.Module, settings: TrainingConfig, seed: int
) -> ArrayRecord:
    """What the site sends: its weights, or (``compress = int8``) its update against
    the received global model as int8 codes with stochastic rounding."""
    model.cpu()
    if settings.compress == "none":
        return ArrayRecord(model.state_dict())
    received = array_record(msg.content, ARRAYS)
    reference = {k: v.numpy() for k, v in received.items()}
    local = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return packed_record(pack(quantize(local, reference, np.random.default_rng(seed))))


def replay_round(
    msg: Message,
    settings: TrainingConfig,
    budget: SiteBudget,
    server_round: int,
    global_hash: str,
) -> Message | None:
    """The same update again, for a round this run already trained from this global
    model (a coordinator restart lost it): no new training, nothing new spent."""
    kept = budget.replayable(server_round, global_hash=global_hash)
    if kept is None:
        return None
    update, metrics, recorded_hash = kept
    if ArrayRecord(update).object_id != recorded_hash:
        logger.warning(
            "kept update of round %d does not match the ledger; not replayed",
            server_round,
        )
        return None
    logger.info(
        "round %d already trained in this run: replaying its update", server_round
    )
    kept_metrics = TrainMetrics.from_record(metrics, dp=True)
    weighted = dataclasses.replace(
        kept_metrics, client_weight=settings.client_dp != "off"
    )
    return reply(msg, ArrayRecord(update), weighted.to_record())
