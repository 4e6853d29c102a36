"""fedvault's Flower ClientApp: one site's side of every round.

The record keys, metric names and decline codec it uses are
:mod:`fedvault.common.protocol`'s; the Flower-facing client modules are this one,
:mod:`fedvault.client.mods` (the privacy gate on training messages) and the
SuperNode launcher (:mod:`fedvault.client.runtime`).

Every handler first checks the whole request (the run's settings) against the
site's own policy, before any data is read
(:func:`fedvault.client.admission.admit`, through
:func:`fedvault.client.policy.check_request`), and declines the run with a typed
reason when it asks for less protection than the policy allows; the coordinator can
ask, never override. Handlers:

- ``query.stats``: the site's summary release (noisy, charged once per dataset
  version, :mod:`fedvault.client.answers`);
- ``train``: DP-SGD on the site's rows from the received global model; replies with
  weights and metrics, or declines (typed reply) when the privacy budget or the data
  does not allow training;
- ``evaluate``: noisy, charged counts on the site's own validation split.

Every training message first passes :func:`fedvault.client.mods.privacy_mod`, which
applies client-level DP clipping and SecAgg+ exactly as the run asks, and refuses
training messages of any other protocol.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import TensorDataset

from fedvault.client import answers
from fedvault.client.admission import Run, admit, refuse_rows, run_data
from fedvault.client.answer_log import answers_mod, notice
from fedvault.client.budget import SiteBudget
from fedvault.client.mods import privacy_mod
from fedvault.client.rounds import replay_round, reply, round_seed, update_of
from fedvault.client.site import SplitData, to_tensors, usable
from fedvault.client.training import (
    LocalSettings,
    dp_schedule,
    train_plain,
    train_private,
)
from fedvault.client.training_setup import local_settings, regression_at_site
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError, ConfigError, FedVaultError
from fedvault.common.evaluation import evaluate
from fedvault.common.models import build_run_model, run_task
from fedvault.common.preprocessing import Preprocessing, site_summary
from fedvault.common.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    NOTICE_ACTION,
    PREPROCESSING,
    PROXIMAL_MU,
    RUN_CLIENT_THREADS,
    RUN_KEY,
    RUN_TARGET,
    SERVER_ROUND,
    STATS_ACTION,
    Decline,
    EvaluateMetrics,
    SiteStats,
    TrainMetrics,
)
from fedvault.common.records import (
    array_record,
    config_record,
    number,
    text,
)
from fedvault.common.wire import summary_to_bytes

logger = logging.getLogger(__name__)
NO_REGRESSION_RELEASE = "a DP regression run releases no validation metrics"

app = ClientApp(mods=[answers_mod, privacy_mod])  # answers_mod: the site's log
app.query(NOTICE_ACTION)(notice)  # a coordinator's notice, recorded by answers_mod


def _threads(context: Context) -> None:
    threads = int(context.run_config.get(RUN_CLIENT_THREADS, 0))
    if threads > 0:
        torch.set_num_threads(threads)


def _log_decline(msg: Message, decline: Decline) -> None:
    kind = msg.metadata.message_type
    logger.warning("declining %s: %s (%s)", kind, decline.reason, decline.detail)


def _decline(msg: Message, decline: Decline) -> Message:
    _log_decline(msg, decline)
    return decline.reply(msg)


@app.query(STATS_ACTION)
def stats(msg: Message, context: Context) -> Message:
    """Summary counts of this site's training rows, for federated preprocessing."""
    site, run = admit(context)
    if isinstance(run, Decline):
        _log_decline(msg, run)
        return Message(SiteStats(site.name, decline=run).to_content(), reply_to=msg)
    target = str(context.run_config[RUN_TARGET])
    try:
        split = run_data(run, target)
    except FedVaultError as exc:  # its data cannot serve: say so, under its name
        why = f"{type(exc).__name__}: {exc}"
        logger.warning("cannot take part: %s", why)
        return Message(SiteStats(site.name, reason=why).to_content(), reply_to=msg)
    if isinstance(split, Decline):
        _log_decline(msg, split)
        return Message(SiteStats(site.name, decline=split).to_content(), reply_to=msg)
    refusal = refuse_rows(run, split)
    regression = regression_at_site(run.settings, split.train[target])
    reason = usable(split, target, regression=regression)
    if refusal is None and reason is None:
        released = _summary(run, split, target, str(context.run_id), regression)
        if isinstance(released, bytes):
            answer = SiteStats(site.name, summary=released)
        else:
            refusal = released
    if refusal is not None:
        _log_decline(msg, refusal)
        answer = SiteStats(site.name, decline=refusal)
    elif reason is not None:
        answer = SiteStats(site.name, reason=reason)
    return Message(answer.to_content(), reply_to=msg)


def _summary(
    run: Run, split: SplitData, target: str, run_id: str, regression: bool
) -> bytes | Decline:
    if not run.settings.dp:  # only where the site's policy allows non-private runs
        return summary_to_bytes(
            site_summary(
                split.train,
                target,
                regression=regression,
                image_shape=split.image_shape,
            )
        )
    budget = _open_budget(run, run_id)
    if isinstance(budget, Decline):
        return budget
    return answers.summary(
        frame=split.train,
        target=target,
        site=run.site,
        budget=budget,
        policy=run.policy,
        settings=run.settings,
        state_dir=run.state_dir,
        regression=regression,
        image_shape=split.image_shape,
    )


def _local_model(
    settings: TrainingConfig, prep: Preprocessing, msg: Message
) -> nn.Module:
    """The run's model (built as the coordinator builds it) with the received
    global weights. Raises :class:`ConfigError` for a model that cannot be built
    here (e.g. a plug-in not installed at this site)."""
    model, _ = build_run_model(
        settings.model, prep, hidden=settings.hidden, dp=settings.dp
    )
    model.load_state_dict(array_record(msg.content, ARRAYS).to_torch_state_dict())
    return model


def _preprocessing(msg: Message) -> Preprocessing:
    return Preprocessing.from_json(
        text(config_record(msg.content, CONFIG), PREPROCESSING)
    )


def _open_budget(run: Run, run_id: str) -> SiteBudget | Decline:
    return SiteBudget.open(
        policy_file=run.policy_file,
        state_dir=run.state_dir,
        run_id=run_id,
        settings=run.settings,
        policy=run.policy,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training on the received global model.

    The site's own policy decides first (typed declines, before any data is read);
    with DP its ledger then plans the round, and the trained round is appended to
    the ledger before the update is sent.
    """
    _threads(context)
    _, run = admit(context)
    if isinstance(run, Decline):
        return _decline(msg, run)
    settings, site = run.settings, run.site
    config = config_record(msg.content, CONFIG)
    prep = _preprocessing(msg)
    server_round = int(number(config, SERVER_ROUND))
    split = run_data(run, prep.target)
    if isinstance(split, Decline):
        return _decline(msg, split)
    refusal = refuse_rows(run, split)
    if refusal is not None:
        return _decline(msg, refusal)
    reason = usable(split, prep.target, regression=prep.regression)
    if reason is not None:
        return _decline(msg, Decline("data", reason))
    data = to_tensors(split.train, prep)
    local = local_settings(settings, prep, number(config, PROXIMAL_MU, 0.0))
    if isinstance(local, Decline):
        return _decline(msg, local)
    try:
        model = _local_model(settings, prep, msg)
    except ConfigError as exc:
        return _decline(msg, Decline("policy", str(exc)))
    if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
        # A broken global model would waste this round's budget on noise.
        return _decline(msg, Decline("policy", "the global model is not finite"))
    seed = round_seed(site, settings.seed, server_round, "train")
    torch.manual_seed(seed)
    if not settings.dp:
        return _train_plain(msg, settings, model, data, local, seed)
    # The coordinator's run key survives a coordinator restart (resume); Flower's
    # run id does not. Either names this run in the site's ledger.
    run_key = str(context.run_config.get(RUN_KEY) or context.run_id)
    budget = _open_budget(run, run_key)
    if isinstance(budget, Decline):
        return _decline(msg, budget)
    examples = answers.train_examples(
        frame=split.train,
        target=prep.target,
        site=site,
        budget=budget,
        policy=run.policy,
        settings=settings,
        state_dir=run.state_dir,
        regression=prep.regression,
        image_shape=split.image_shape,
    )
    if isinstance(examples, Decline):
        return _decline(msg, examples)
    return _train_private(msg, run, budget, model, data, local, server_round, examples)


def _train_plain(
    msg: Message,
    settings: TrainingConfig,
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    seed: int,
) -> Message:
    """Plain SGD, only ever reached when the site's policy allows non-private
    training (``allow-non-private``): nothing is accounted or recorded."""
    logger.warning("training WITHOUT DP, as the policy allows (allow-non-private)")
    result = train_plain(model, data, local)
    plain = TrainMetrics(
        num_examples=len(data),
        steps=result.steps,
        client_weight=settings.client_dp != "off",
    )
    return reply(msg, update_of(msg, model, settings, seed), plain.to_record())


def _train_private(
    msg: Message,
    run: Run,
    budget: SiteBudget,
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    server_round: int,
    examples: int,
) -> Message:
    """DP-SGD for the round the budget plans, recorded in the ledger before the
    update is sent (or the update of this round again, if already trained);
    ``examples``: the row count the site's summary released."""
    settings = run.settings
    seed = int(torch.initial_seed())
    global_hash = array_record(msg.content, ARRAYS).object_id
    replayed = replay_round(msg, settings, budget, server_round, global_hash)
    if replayed is not None:
        return replayed
    plan = budget.plan_round(dp_schedule(len(data), settings.batch_size))
    if isinstance(plan, Decline):
        return _decline(msg, plan)
    try:
        result = train_private(
            model, data, local, plan=plan, max_grad_norm=settings.max_grad_norm
        )
    except ConfigError as exc:  # a model Opacus cannot train right: nothing ran
        return _decline(msg, Decline("policy", str(exc)))
    sent = update_of(msg, model, settings, seed)
    try:
        figures = budget.record(
            server_round,
            plan,
            sent.object_id,
            noise_from_run_seed=run.site.simulated,
        )
    except BudgetExceededError as exc:
        return _decline(msg, Decline("budget", str(exc)))
    metrics = TrainMetrics(num_examples=examples, steps=result.steps, dp=figures)
    budget.keep(
        server_round,
        global_hash=global_hash,
        update=model.state_dict(),
        metrics=metrics.values(),
    )
    weighted = dataclasses.replace(metrics, client_weight=settings.client_dp != "off")
    return reply(msg, sent, weighted.to_record())


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Metrics of the global model on this site's validation split."""
    _threads(context)
    _, run = admit(context)
    if isinstance(run, Decline):
        return _decline(msg, run)
    settings = run.settings
    prep = _preprocessing(msg)
    split = run_data(run, prep.target)
    if isinstance(split, Decline):
        return _decline(msg, split)
    refusal = refuse_rows(run, split)
    if refusal is not None:
        return _decline(msg, refusal)
    if len(split.validation) == 0:
        return _decline(msg, Decline("data", "no validation rows"))
    data = to_tensors(split.validation, prep)
    try:
        model = _local_model(settings, prep, msg)
    except ConfigError as exc:
        return _decline(msg, Decline("policy", str(exc)))
    features, labels = data.tensors
    result = evaluate(
        model,
        features,
        labels,
        num_classes=prep.num_classes,
        task=run_task(prep),
        regression_loss=settings.regression_loss,
        target_scale=(prep.target_mean, prep.target_std),
    )
    weighted = settings.client_dp != "off"
    if not settings.dp:
        exact = EvaluateMetrics(
            num_examples=result.examples,
            accuracy=result.accuracy,
            client_weight=weighted,
            regression=result.values() if prep.regression else None,
        )
        return Message(RecordDict({METRICS: exact.to_record()}), reply_to=msg)
    if prep.regression:  # no accounted mechanism for these: nothing is released
        return _decline(msg, Decline("data", NO_REGRESSION_RELEASE))
    budget = _open_budget(run, str(context.run_config.get(RUN_KEY) or context.run_id))
    if isinstance(budget, Decline):
        return _decline(msg, budget)
    server_round = int(number(config_record(msg.content, CONFIG), SERVER_ROUND, 0.0))
    metrics = answers.validation_metrics(
        result,
        budget=budget,
        server_round=server_round,
        client_weight=weighted,
        seed=round_seed(run.site, settings.seed, server_round, "evaluate"),
    )
    if isinstance(metrics, Decline):
        return _decline(msg, metrics)
    return Message(RecordDict({METRICS: metrics.to_record()}), reply_to=msg)
