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

- the truth is DP-SGD's update by definition, computed without Opacus: each of
  the first :data:`TRUTH_ROWS` rows' gradient from its own backward pass, clipped
  to the clipping norm as Opacus clips, summed and scaled;
- a mode is correct when its update on those rows equals the truth
  (``torch.allclose``, rtol 1e-4, atol 1e-6); a mode that raises or differs is
  left out, with the reason;
- no correct mode at all refuses the model (:class:`ConfigError`): a parameter
  used outside its own layer (tied weights) or a layer Opacus computes wrongly
  would train on wrong gradients, and a layer that mixes the rows of a batch
  would void the bound each example's clipped gradient gives;
- a model whose per-row truth is not reproducible (random layers inside its own
  code, augmentation: the truth differs between two seeds) has no truth to
  compare with; there Opacus' default, ``hooks``, is the reference, as before.
  ``nn.Dropout`` layers are switched off for the comparison only.

An empty Poisson batch never runs the model (:func:`noise_only_step`), so every
mode takes it. Ghost clipping is not measured: it never forms per-sample
gradients, so augmentation multiplicity cannot average them, and its loss
wrapper differs.

The probe changes nothing the round uses: it trains deep copies of the model, draws
its random numbers (dropout, augmentation) inside ``torch.random.fork_rng`` from a
fixed seed, and releases nothing (the timing stays at the site; a deployed
site writes the choice to its own log, ``supernode.log``). The choice is kept per
process for the same architecture, input shape, batch size, device and loss, so a
long-lived process times the modes once; the kept mode is checked against the
truth again each time.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvault.common.errors import ConfigError, first_line

# A child of the site's log (fedvault.client.answer_log): on a deployed site the
# choice is a line of supernode.log; in simulation nothing is printed.
logger = logging.getLogger("fedvault.site.grad_sample")

MODES = ("hooks", "ew", "functorch")
"""Opacus' grad-sample modes a site measures, the reference first."""

REFERENCE = MODES[0]
PROBE_SEED = 0
RTOL, ATOL = 1e-4, 1e-6
TIMED_STEPS = 2
TRUTH_ROWS = 8

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
    """The fastest of :data:`MODES` whose update equals DP-SGD's by definition.

    ``data``: the site's rows (features (n, ...) float32, labels (n,)); the probe
    batch is its first ``min(batch_size, n)`` rows, correctness is checked on its
    first :data:`TRUTH_ROWS`. ``make_step`` builds the step the round takes (loss,
    augmentation) from a model and an optimizer (Opacus' wrapped ones, or the
    plain model); ``key``: what else the step depends on (task, loss,
    augmentation), for the per-process cache. The model itself is not changed.

    Raises :class:`ConfigError` (one line, every mode's reason) when no mode is
    correct, or when ``hooks`` fails and there is no truth to check another by.
    """
    x, y = data.tensors[0], data.tensors[1]
    rows = min(batch_size, len(x))
    batch = (x[:rows].to(device), y[:rows].to(device))
    settings = (lr, momentum, max_grad_norm, make_step)
    checked = min(rows, TRUTH_ROWS)
    truth = _truth(model, batch, settings, checked)
    cache_key = (_signature(model), tuple(x.shape[1:]), rows, str(device), *key)
    cached = _chosen.get(cache_key)
    if cached is not None and (
        truth is None
        or _same(
            _probe(model, batch, cached.mode, settings, checked, timed=0)[0], truth
        )
    ):
        return cached  # the timing is kept; correctness is checked every time
    updates: dict[str, tuple[list[torch.Tensor], float]] = {}
    left_out: dict[str, str] = {}
    for mode in MODES:
        try:
            updates[mode] = _probe(model, batch, mode, settings, checked)
        except Exception as exc:  # a mode that fails is left out
            left_out[mode] = first_line(exc)
    if truth is None and REFERENCE not in updates:
        raise ConfigError(
            f"model: Opacus cannot train it (hooks: {left_out[REFERENCE]})"
        )
    reference = updates[REFERENCE][0] if truth is None else truth
    basis = "hooks' update" if truth is None else "the per-row update"
    times = {}
    for mode, (update, seconds) in updates.items():
        if _same(update, reference):
            times[mode] = seconds
        else:
            left_out[mode] = f"its update differs from {basis}"
    if not times:
        reasons = "; ".join(f"{m}: {left_out[m]}" for m in MODES)
        raise ConfigError(
            "model: no Opacus grad-sample mode computes its per-example gradients "
            f"right ({reasons}): a parameter used outside its own layer, a layer "
            "Opacus gets wrong, or one that mixes a batch's rows (which would void "
            "DP-SGD's bound)"
        )
    choice = ModeChoice(min(times, key=times.__getitem__), times, left_out)
    logger.info(
        "grad-sample mode %s, checked against %s (seconds per step: %s; left out: %s)",
        choice.mode,
        basis,
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
    checked: int,
    timed: int = TIMED_STEPS,
) -> tuple[list[torch.Tensor], float]:
    """One mode on a copy of ``model``: its update with noise 0 on the first
    ``checked`` rows (parameter deltas; dropout off), then the best time of
    ``timed`` steps on the whole batch (inf for none)."""
    from opacus import PrivacyEngine

    lr, momentum, max_grad_norm, make_step = settings
    x, y = batch
    with _isolated(x.device, PROBE_SEED):
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
            with _dropout_off(net):
                step(x[:checked], y[:checked])
            update = [
                p.detach() - b for p, b in zip(net.parameters(), before, strict=True)
            ]
            best = float("inf")
            for _ in range(timed):
                _sync(x.device)
                started = time.perf_counter()
                step(x, y)
                _sync(x.device)
                best = min(best, time.perf_counter() - started)
        finally:
            if hasattr(wrapped, "remove_hooks"):
                wrapped.remove_hooks()
    return update, best


def _truth(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    settings: tuple[float, float, float, StepFactory],
    checked: int,
) -> list[torch.Tensor] | None:
    """DP-SGD's first update on the first ``checked`` rows, by definition and
    without Opacus: each row's gradient from its own backward pass, clipped by
    Opacus' factor min(1, C / (norm + 1e-6)), summed, divided by the batch's
    size, times -lr (the first SGD step, with or without momentum). None when
    the model cannot run one row, or when two seeds give two truths (random
    layers, augmentation)."""
    lr, _, max_grad_norm, make_step = settings
    x, y = batch
    found = []
    for seed in (PROBE_SEED, PROBE_SEED + 1):
        with _isolated(x.device, seed):
            net = copy.deepcopy(model)
            net.train()
            recorder = _Recorder(net.parameters())
            step = make_step(net, recorder)
            total = [torch.zeros_like(p) for p in net.parameters()]
            try:
                with _dropout_off(net):
                    for i in range(checked):
                        step(x[i : i + 1], y[i : i + 1])
                        norm = torch.stack([g.norm(2) for g in recorder.grads]).norm(2)
                        factor = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
                        for t, g in zip(total, recorder.grads, strict=True):
                            t.add_(g * factor)
            except Exception:  # a model that cannot run one row: no truth
                return None
        found.append([-lr * t / len(x) for t in total])
    return found[0] if _same(found[1], found[0]) else None


class _Recorder(torch.optim.Optimizer):
    """An optimizer whose step only keeps the gradients (zeros for unused ones)."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {})
        self.grads: list[torch.Tensor] = []

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for group in self.param_groups
            for p in group["params"]
        ]


@contextmanager
def _isolated(device: torch.device, seed: int) -> Iterator[None]:
    """Random numbers from ``seed``, the caller's generators restored after;
    Opacus' warnings silenced."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        yield


@contextmanager
def _dropout_off(net: nn.Module) -> Iterator[None]:
    """``nn.Dropout`` layers in eval mode (they have no weights; the others keep
    training mode, which Opacus' hooks need)."""
    layers = [
        m
        for m in net.modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training
    ]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


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
    ``forward`` (two plug-ins with the same layers can use them differently), its
    settings as ``repr`` shows them (a convolution's padding mode) and the
    parameters' names and shapes."""
    return (
        repr(model),
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
