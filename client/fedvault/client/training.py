"""Local training at a site: DP-SGD (fedvault's fast step or Opacus), or plain SGD.

A DP round is planned before it trains: :func:`dp_schedule` gives the Poisson
schedule Opacus' loader runs for the site's rows, the site's budget turns it into a
:class:`~fedvault.common.privacy.Step` (noise multiplier, sample rate, steps), and
:func:`train_private` runs exactly that step, checking once that its loader samples
at the planned rate. The steps the accountant is given are the steps executed.

Every kind of training goes through one loop over batches (:func:`_run`); what
differs is the step taken on each batch: fedvault's book-keeping DP-SGD step
(:mod:`fedvault.client._fastdp`) for plain MLPs, its layer-wise step
(:mod:`fedvault.client._fastdp_layers`) for the cnn and MLPs with momentum, Opacus'
``DPOptimizer`` otherwise (and with augmentation; per-sample gradients in the
fastest grad-sample mode that is correct for the model, measured at the site by
:mod:`fedvault.client._gsm_mode`), and a plain SGD optimizer step without DP.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvault.client import _fastdp, _fastdp_layers
from fedvault.client._augmult import augmented_step
from fedvault.client._gsm_mode import (
    ModeChoice,
    fastest_correct_mode,
    noise_only_step,
)
from fedvault.common.augment import Augmentation
from fedvault.common.config import RegressionLoss
from fedvault.common.errors import PrivacyError
from fedvault.common.models import Task, loss_fn, per_sample_loss, targets_for_loss
from fedvault.common.privacy import Schedule, Step

logger = logging.getLogger(__name__)

_BatchStep = Callable[[torch.Tensor, torch.Tensor], float]
"""One update on a batch (features, integer labels, on the device); returns the
batch's summed loss."""


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """Hyper-parameters of one round of local training.

    ``epochs`` is what :func:`train_plain` runs; a DP round runs the steps of its
    plan (which the budget derived from the same epochs). ``task``: the model's
    task (None: inferred from ``num_classes``); ``regression_loss``: MSE or Huber
    for a regression (ignored otherwise). ``augmentation``: images only,
    drawn per sample inside each step, with its multiplicity (copies averaged
    before clipping, :mod:`fedvault.client._augmult`).
    """

    num_classes: int
    task: Task | None = None
    regression_loss: RegressionLoss = "mse"
    augmentation: Augmentation | None = None
    momentum: float = 0.0
    lr: float
    epochs: int
    batch_size: int
    proximal_mu: float = 0.0
    dp_engine: Literal["auto", "opacus"] = "auto"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(frozen=True)
class TrainResult:
    loss: float
    steps: int
    sample_rate: float


def dp_schedule(num_examples: int, batch_size: int) -> Schedule:
    """The schedule Opacus' Poisson loader runs for ``num_examples`` rows."""
    from opacus.data_loader import DPDataLoader

    base = DataLoader(
        TensorDataset(torch.zeros(num_examples, 1)), batch_size=batch_size
    )
    loader = DPDataLoader.from_data_loader(base)
    return Schedule(sample_rate=float(loader.sample_rate), steps_per_epoch=len(loader))


def train_private(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    *,
    plan: Step,
    max_grad_norm: float,
) -> TrainResult:
    """DP-SGD for exactly ``plan.steps`` steps; the model is updated in place.

    ``data`` holds features (float32, shape (n, in_features)) and integer labels
    (int64, shape (n,)). Poisson batches come from Opacus' ``DPDataLoader`` at
    ``plan.sample_rate``, per-sample gradients are clipped to ``max_grad_norm`` and
    noised with ``plan.noise_multiplier``. Plain MLPs take fedvault's book-keeping
    step (``_fastdp``: same clipping, noise and scaling as Opacus, without
    per-sample gradient tensors), the cnn and MLPs with momentum its layer-wise
    step (``_fastdp_layers``: the same again, through the run's SGD optimizer);
    other models, augmentation, or ``local.dp_engine == "opacus"``, Opacus'
    ``PrivacyEngine`` (with augmentation, its per-sample gradients of the
    copies of an example are averaged before clipping). Randomness comes from
    torch's global generators: seed them with ``torch.manual_seed`` for a
    reproducible run.

    Raises :class:`PrivacyError` if the loader's sample rate is not the plan's
    (nothing is trained then).
    """
    model.to(local.device)
    engine = _dp_engine(model, local)
    with engine(model, data, local, plan, max_grad_norm) as (loader, step):
        if float(loader.sample_rate) != plan.sample_rate:
            raise PrivacyError("DP loader schedule differs from the planned one")
        loss = _run(model, loader, local, plan.steps, step)
    return TrainResult(loss=loss, steps=plan.steps, sample_rate=plan.sample_rate)


def _dp_engine(model: nn.Module, local: LocalSettings) -> Callable[..., Any]:
    """The DP-SGD engine for ``model``: fedvault's book-keeping step for plain
    MLPs without momentum, its layer-wise step for the other models it supports
    (the cnn, MLPs with momentum), Opacus' otherwise (and with augmentation)."""
    if local.dp_engine != "auto" or local.augmentation is not None:
        return _opacus_engine
    return _fast_engine if _fastdp_layers.supports(model) else _opacus_engine


def train_plain(
    model: nn.Module, data: TensorDataset, local: LocalSettings
) -> TrainResult:
    """Non-private minibatch SGD with the same model, loss and optimizer, for
    ``local.epochs`` shuffled epochs (``data`` as for :func:`train_private`)."""
    model.to(local.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=local.lr, momentum=local.momentum
    )
    loader = DataLoader(data, batch_size=local.batch_size, shuffle=True)
    model.train()
    steps = local.epochs * len(loader)
    loss = _run(model, loader, local, steps, _sgd_step(model, optimizer, local))
    return TrainResult(loss=loss, steps=steps, sample_rate=0.0)


def _run(
    model: nn.Module,
    loader: DataLoader[Any],
    local: LocalSettings,
    steps: int,
    step: _BatchStep,
) -> float:
    """Take ``step`` on ``steps`` batches of ``loader`` (passing over it as often as
    needed), each followed by the FedProx pull; the mean loss per example."""
    anchor = [p.detach().clone() for p in model.parameters()]
    total_loss, seen = 0.0, 0
    for x, y in _batches(loader, steps):
        total_loss += step(x.to(local.device), y.to(local.device))
        if local.proximal_mu > 0:
            _proximal_step(model, anchor, local.lr, local.proximal_mu)
        seen += len(y)
    return total_loss / max(seen, 1)


def _batches(loader: DataLoader[Any], steps: int) -> Iterator[Any]:
    """Exactly ``steps`` batches: whole passes over ``loader``, then part of one.

    A pass is started only when a batch is still due, and never read past what is
    due, so the random draws (Poisson masks, shuffles) are those of the batches
    used.
    """
    left = steps
    while left > 0:
        due = left
        for batch in itertools.islice(loader, due):
            left -= 1
            yield batch
        if left == due:
            raise ValueError("the data loader yields no batches")


def _proximal_step(
    model: nn.Module, anchor: list[torch.Tensor], lr: float, mu: float
) -> None:
    """FedProx pull towards the global model, applied after each optimizer step.

    It depends only on the current weights and the (public) global model, so it is
    post-processing of the DP step and costs no privacy.
    """
    with torch.no_grad():
        for p, a in zip(model.parameters(), anchor, strict=True):
            p.sub_(lr * mu * (p - a))


def _sgd_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, local: LocalSettings
) -> _BatchStep:
    """An optimizer step on the mean loss (plain SGD, or Opacus' DPOptimizer); with
    augmentation, on the augmented copies of the batch."""
    criterion = loss_fn(
        local.num_classes, task=local.task, regression_loss=local.regression_loss
    )
    if local.augmentation is not None:

        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            targets = targets_for_loss(y, local.num_classes, task=local.task)
            value: torch.Tensor = criterion(out, targets)
            return value

        return augmented_step(module, optimizer, loss, local.augmentation)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        if len(y) == 0:
            # An empty Poisson batch is still a step (pure noise).
            noise_only_step(optimizer)
            return 0.0
        loss = criterion(
            module(x), targets_for_loss(y, local.num_classes, task=local.task)
        )
        loss.backward()
        optimizer.step()
        return float(loss.item()) * len(y)

    return step


_Engine = Iterator[tuple[Any, _BatchStep]]


@contextmanager
def _fast_engine(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    plan: Step,
    max_grad_norm: float,
) -> _Engine:
    """Opacus' Poisson loader and one of fedvault's own DP-SGD steps: book-keeping
    for plain MLPs without momentum, layer-wise (through the run's SGD optimizer,
    momentum as under Opacus' DPOptimizer) for the other models it supports."""
    from opacus.data_loader import DPDataLoader

    if not isinstance(model, nn.Sequential):
        raise TypeError("fedvault's DP-SGD steps take an nn.Sequential")
    loader = DPDataLoader.from_data_loader(
        DataLoader(data, batch_size=local.batch_size)
    )
    per_sample = per_sample_loss(
        local.num_classes, task=local.task, regression_loss=local.regression_loss
    )
    sigma, ebs = plan.noise_multiplier, int(len(data) * plan.sample_rate)  # Opacus'
    fast: Callable[[torch.Tensor, torch.Tensor], float]
    if local.momentum == 0 and _fastdp.supports(model):
        fast = partial(
            _fastdp.dp_sgd_step,
            model,
            per_sample_loss=per_sample,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            expected_batch_size=ebs,
            lr=local.lr,
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=local.lr, momentum=local.momentum
        )
        fast = partial(
            _fastdp_layers.dp_sgd_step,
            model,
            optimizer,
            per_sample_loss=per_sample,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            expected_batch_size=ebs,
        )

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        targets = targets_for_loss(y, local.num_classes, task=local.task)
        return fast(x, targets)

    model.train()
    yield loader, step


def grad_sample_mode_for(
    model: nn.Module, data: TensorDataset, local: LocalSettings, max_grad_norm: float
) -> ModeChoice:
    """Opacus' fastest correct grad-sample mode for ``model`` at this site
    (:func:`fedvault.client._gsm_mode.fastest_correct_mode`): the round's step
    is timed, the same step without augmentation is checked.

    Raises :class:`~fedvault.common.errors.ConfigError` for a model DP-SGD
    cannot train right under Opacus.
    """
    unaugmented = dataclasses.replace(local, augmentation=None)
    return fastest_correct_mode(
        model,
        data,
        batch_size=local.batch_size,
        lr=local.lr,
        momentum=local.momentum,
        max_grad_norm=max_grad_norm,
        device=local.device,
        make_step=lambda wrapped, opt: _sgd_step(wrapped, opt, local),
        check_step=lambda wrapped, opt: _sgd_step(wrapped, opt, unaugmented),
        key=(local.num_classes, local.task, local.regression_loss, local.augmentation),
    )


@contextmanager
def _opacus_engine(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    plan: Step,
    max_grad_norm: float,
) -> _Engine:
    """Opacus' ``PrivacyEngine``: its Poisson loader, per-sample gradients in the
    fastest mode whose update equals the per-row one for this model here
    (:mod:`._gsm_mode`; raises its :class:`ConfigError` when none does) and
    ``DPOptimizer`` (hooks removed again afterwards)."""
    from opacus import PrivacyEngine

    choice = grad_sample_mode_for(model, data, local, max_grad_norm)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=local.lr, momentum=local.momentum
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        private_model, dp_optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=DataLoader(data, batch_size=local.batch_size),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=choice.mode,
        )
    private_model.train()
    try:
        yield loader, _sgd_step(private_model, dp_optimizer, local)
    finally:
        if hasattr(private_model, "remove_hooks"):
            private_model.remove_hooks()
