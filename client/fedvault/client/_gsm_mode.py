"""Opacus' fastest correct grad-sample mode for a model, measured at the site.

.. warning:: Privacy mechanism internals. Use through the site's training loop
   (:func:`fedvault.client.training.train_private`).

Models that fedvault's own DP-SGD steps do not take (``resnet18``, most plug-ins,
any model with augmentation) train under Opacus' ``PrivacyEngine``, which can form
per-sample gradients three ways: module hooks (``hooks``), PyTorch's expanded
weights (``ew``) and ``torch.func``'s vmap (``functorch``). Which is fastest depends
on the model, the batch and the device (docs/benchmarks.md, B1 and B10), and not
every mode handles every layer. Before its first DP round with a model, a site
measures them on its own device, on one batch of its own rows with noise 0, and
keeps the fastest *correct* one:

- ``hooks`` is the reference (Opacus' default);
- a mode is correct when its update on that batch equals the reference's (same
  clipping, same step; ``torch.allclose`` with rtol 1e-4, atol 1e-6) and it takes
  an empty batch (Poisson sampling draws them: :func:`noise_only_step`) without
  an error;
- a mode that raises, or gives another update, is left out; ``hooks`` is kept
  when it alone passes.

Ghost clipping is not measured: it never forms per-sample gradients, so
augmentation multiplicity cannot average them, and its loss wrapper differs.

The probe changes nothing the round uses: it trains deep copies of the model, draws
its random numbers (dropout, augmentation) inside ``torch.random.fork_rng`` from a
fixed seed, and releases nothing (the timing stays at the site; a deployed
site writes the choice to its own log, ``supernode.log``). The choice is kept per
process for the same architecture, input shape, batch size, device and loss, so a
long-lived process measures once.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvault.common.errors import first_line

# A child of the site's log (fedvault.client.answer_log): on a deployed site the
# choice is a line of supernode.log; in simulation nothing is printed.
logger = logging.getLogger("fedvault.site.grad_sample")

MODES = ("hooks", "ew", "functorch")
"""Opacus' grad-sample modes a site measures, the reference first."""

REFERENCE = MODES[0]
PROBE_SEED = 0
RTOL, ATOL = 1e-4, 1e-6
TIMED_STEPS = 2

StepFactory = Callable[[nn.Module, torch.optim.Optimizer], Callable[..., float]]
"""Builds the round's batch step from the wrapped model and its DPOptimizer."""


@dataclass(frozen=True)
class ModeChoice:
    """What the probe measured: the chosen ``mode``, each correct mode's best
    seconds per step (``seconds``) and why each other mode was left out
    (``left_out``, one line each)."""

    mode: str
    seconds: dict[str, float] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


_chosen: dict[tuple[Any, ...], ModeChoice] = {}


def fastest_correct_mode(
    model: nn.Module,
    data: TensorDataset,
    *,
    batch_size: int,
    lr: float,
    momentum: float,
    max_grad_norm: float,
    device: torch.device,
    make_step: StepFactory,
    key: tuple[Any, ...] = (),
) -> ModeChoice:
    """The fastest of :data:`MODES` whose update equals ``hooks``' on one batch.

    ``data``: the site's rows (features (n, ...) float32, labels (n,)); the probe
    batch is its first ``min(batch_size, n)`` rows. ``make_step`` builds the step
    the round takes (loss, augmentation) from Opacus' wrapped model and optimizer;
    ``key``: what else the step depends on (task, loss, augmentation), for the
    per-process cache. The model itself is not changed. Never raises for a mode
    that fails (it is left out); raises whatever ``hooks`` raises, as the round
    would.
    """
    x, y = data.tensors[0], data.tensors[1]
    rows = min(batch_size, len(x))
    cache_key = (_signature(model), tuple(x.shape[1:]), rows, str(device), *key)
    if cache_key in _chosen:
        return _chosen[cache_key]
    batch = (x[:rows].to(device), y[:rows].to(device))
    settings = (lr, momentum, max_grad_norm, make_step)
    reference, seconds = _probe(model, batch, REFERENCE, settings)
    times, left_out = {REFERENCE: seconds}, {}
    for mode in MODES[1:]:
        try:
            update, seconds = _probe(model, batch, mode, settings)
        except Exception as exc:  # a mode that fails is left out
            left_out[mode] = first_line(exc)
            continue
        if not _same(update, reference):
            left_out[mode] = "its update differs from hooks'"
            continue
        times[mode] = seconds
    choice = ModeChoice(min(times, key=times.__getitem__), times, left_out)
    logger.info(
        "grad-sample mode %s (seconds per step: %s; left out: %s)",
        choice.mode,
        ", ".join(f"{m} {s:.4f}" for m, s in times.items()),
        "; ".join(f"{m}: {why}" for m, why in left_out.items()) or "none",
    )
    _chosen[cache_key] = choice
    return choice


def _probe(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    mode: str,
    settings: tuple[float, float, float, StepFactory],
) -> tuple[list[torch.Tensor], float]:
    """One mode on a copy of ``model``: its first update with noise 0 (parameter
    deltas), then an empty batch, then the best time of :data:`TIMED_STEPS` steps."""
    from opacus import PrivacyEngine

    lr, momentum, max_grad_norm, make_step = settings
    x, y = batch
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(PROBE_SEED)
        net = copy.deepcopy(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
        wrapped, dp_optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=net,
            optimizer=optimizer,
            data_loader=DataLoader(TensorDataset(x, y), batch_size=len(x)),
            noise_multiplier=0.0,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        try:
            wrapped.train()
            step = make_step(wrapped, dp_optimizer)
            before = [p.detach().clone() for p in net.parameters()]
            step(x, y)
            update = [
                p.detach() - b for p, b in zip(net.parameters(), before, strict=True)
            ]
            step(x[:0], y[:0])
            best = float("inf")
            for _ in range(TIMED_STEPS):
                _sync(x.device)
                started = time.perf_counter()
                step(x, y)
                _sync(x.device)
                best = min(best, time.perf_counter() - started)
        finally:
            if hasattr(wrapped, "remove_hooks"):
                wrapped.remove_hooks()
    return update, best


def noise_only_step(optimizer: torch.optim.Optimizer) -> None:
    """An empty Poisson batch's step under Opacus' ``DPOptimizer``, in any mode.

    Each trainable parameter gets per-sample gradients of shape (0, *shape): what
    the hooks mode gives a backward pass on no rows. The optimizer then clips
    nothing, adds its noise and steps, as for any batch. ``ew`` and ``functorch``
    cannot run a model on 0 rows (a batch size of 0, a GroupNorm of 0 groups), so
    the model is not run at all.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                setattr(p, "grad_sample", p.new_zeros((0, *p.shape)))  # noqa: B010
    optimizer.step()


def _same(update: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    return len(update) == len(reference) and all(
        u.shape == r.shape and torch.allclose(u, r, rtol=RTOL, atol=ATOL)
        for u, r in zip(update, reference, strict=False)
    )


def _signature(model: nn.Module) -> tuple[Any, ...]:
    """The architecture, not the weights: each module's type, the code of its
    ``forward`` (two plug-ins with the same layers can use them differently) and
    the parameters' names and shapes."""
    return (
        tuple(
            (type(m).__module__, type(m).__qualname__, _code(m))
            for m in model.modules()
        ),
        tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
    )


def _code(module: nn.Module) -> Any:
    code = getattr(type(module).forward, "__code__", None)
    return None if code is None else (code.co_code, code.co_consts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
