"""Local training at a site: DP-SGD with Opacus, or plain SGD for comparison.

The DP loader's sampling rate and step count are derived from Opacus' own Poisson
loader (:func:`dp_schedule`), so the steps planned for the accountant are exactly the
steps executed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvault.client import _fastdp
from fedvault.common.errors import PrivacyError
from fedvault.common.models import loss_fn, per_sample_loss, targets_for_loss
from fedvault.common.privacy import Schedule

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """Hyper-parameters of one round of local training."""

    num_classes: int
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


def train_private(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    *,
    sigma: float,
    max_grad_norm: float,
) -> TrainResult:
    """DP-SGD for ``epochs`` local epochs; the model is updated in place.

    Poisson batches come from Opacus' ``DPDataLoader`` and the steps are exactly
    :func:`dp_schedule`'s. Plain MLPs take fedvault's book-keeping step
    (``_fastdp``: same clipping, noise and scaling as Opacus, without per-sample
    gradient tensors); other models, or ``local.dp_engine == "opacus"``, Opacus'
    ``PrivacyEngine``. Randomness comes from torch's global generators: seed them
    with ``torch.manual_seed`` for a reproducible run.
    """
    model.to(local.device)
    if local.dp_engine == "auto" and _fastdp.supports(model):
        return _train_fast(model, data, local, sigma=sigma, max_grad_norm=max_grad_norm)
    return _train_opacus(model, data, local, sigma=sigma, max_grad_norm=max_grad_norm)


def _train_fast(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    *,
    sigma: float,
    max_grad_norm: float,
) -> TrainResult:
    from opacus.data_loader import DPDataLoader

    expected = dp_schedule(len(data), local.batch_size)
    loader = DPDataLoader.from_data_loader(
        DataLoader(data, batch_size=local.batch_size)
    )
    if len(loader) != expected.steps_per_epoch:
        raise PrivacyError("DP loader schedule differs from the planned one")
    expected_batch = int(len(data) * loader.sample_rate)  # as Opacus' make_private
    per_sample = per_sample_loss(local.num_classes)
    anchor = [p.detach().clone() for p in model.parameters()]
    if not isinstance(model, nn.Sequential):
        raise TypeError("the fast DP-SGD path takes an nn.Sequential MLP")
    model.train()
    steps, total_loss, seen = 0, 0.0, 0
    for _ in range(local.epochs):
        for x, y in loader:
            x, y = x.to(local.device), y.to(local.device)
            total_loss += _fastdp.dp_sgd_step(
                model,
                x,
                targets_for_loss(y, local.num_classes),
                per_sample,
                sigma=sigma,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch,
                lr=local.lr,
            )
            if local.proximal_mu > 0 and len(y):
                _proximal_step(model, anchor, local.lr, local.proximal_mu)
            steps += 1
            seen += len(y)
    return TrainResult(
        loss=total_loss / max(seen, 1), steps=steps, sample_rate=expected.sample_rate
    )


def _train_opacus(
    model: nn.Module,
    data: TensorDataset,
    local: LocalSettings,
    *,
    sigma: float,
    max_grad_norm: float,
) -> TrainResult:
    from opacus import PrivacyEngine

    device, num_classes, lr = local.device, local.num_classes, local.lr
    batch_size, proximal_mu = local.batch_size, local.proximal_mu
    expected = dp_schedule(len(data), batch_size)
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        private_model, dp_optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=DataLoader(data, batch_size=batch_size),
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
        )
    if len(loader) != expected.steps_per_epoch:
        raise PrivacyError("DP loader schedule differs from the planned one")
    criterion = loss_fn(num_classes)
    steps, total_loss, seen = 0, 0.0, 0
    private_model.train()
    for _ in range(local.epochs):
        for x, y in loader:
            dp_optimizer.zero_grad(set_to_none=True)
            x, y = x.to(device), y.to(device)
            out = private_model(x)
            if len(y) == 0:
                # An empty Poisson batch is still a step (pure noise). It must go
                # through backward so that Opacus sees its (empty) per-sample grads.
                loss = out.sum() * 0.0
            else:
                loss = criterion(out, targets_for_loss(y, num_classes))
            loss.backward()
            dp_optimizer.step()
            if proximal_mu > 0:
                _proximal_step(model, anchor, lr, proximal_mu)
            steps += 1
            total_loss += loss.item() * len(y)
            seen += len(y)
    if hasattr(private_model, "remove_hooks"):
        private_model.remove_hooks()
    return TrainResult(
        loss=total_loss / max(seen, 1), steps=steps, sample_rate=expected.sample_rate
    )


def train_plain(
    model: nn.Module, data: TensorDataset, local: LocalSettings
) -> TrainResult:
    """Non-private minibatch SGD with the same model, loss and optimizer."""
    device, num_classes, lr = local.device, local.num_classes, local.lr
    batch_size, proximal_mu = local.batch_size, local.proximal_mu
    model.to(device)
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    criterion = loss_fn(num_classes)
    steps, total_loss, seen = 0, 0.0, 0
    model.train()
    for _ in range(local.epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            x, y = x.to(device), y.to(device)
            loss = criterion(model(x), targets_for_loss(y, num_classes))
            loss.backward()
            optimizer.step()
            if proximal_mu > 0:
                _proximal_step(model, anchor, lr, proximal_mu)
            steps += 1
            total_loss += loss.item() * len(y)
            seen += len(y)
    return TrainResult(loss=total_loss / max(seen, 1), steps=steps, sample_rate=0.0)
