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
- first, a model whose output for a row depends on the other rows of its batch
  (a batch-norm-like layer, even a functional one) is refused
  (:class:`ConfigError`): clipping each example's gradient would bound nothing;
- a mode is correct when its clipped gradient on those rows equals the truth
  (each parameter within 10% of its norm, :func:`_same`); a mode that raises or
  differs is left out;
- no correct mode at all refuses the model: a parameter used outside its own
  layer (tied weights), a layer Opacus computes wrongly or a trainable weight
  the model never uses would train on wrong gradients;
- the check runs without augmentation (multiplicity averages per-sample rows the
  same way in every mode) and with ``nn.Dropout`` layers off; a model whose
  per-row truth is still not reproducible (randomness in its own code: two seeds
  give two truths) has no truth to compare with, and there a mode must match
  Opacus' default, ``hooks``.

A refusal names only which modes fail and which differ; the errors themselves,
which could quote shapes of the site's batch, go to the site's own log.

An empty Poisson batch never runs the model (:func:`noise_only_step`), so every
mode takes it. Ghost clipping is not measured: it never forms per-sample
gradients, so augmentation multiplicity cannot average them, and its loss
wrapper differs.

The probe changes nothing the round uses: it trains deep copies of the model, draws
its random numbers (dropout, augmentation) inside ``torch.random.fork_rng`` from a
fixed seed, and releases nothing but a refusal's decline (the timing stays at
the site; a deployed site writes the choice to its own log, ``supernode.log``).
The choice is kept per process for the same architecture, input shape, batch
size, device and loss, so a long-lived process times the modes once; the kept
mode is checked against the truth again each time, and without a truth nothing
is kept.
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
RTOL = 0.1
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
    check_step: StepFactory | None = None,
    key: tuple[Any, ...] = (),
) -> ModeChoice:
    """The fastest of :data:`MODES` whose clipped gradient equals DP-SGD's by
    definition.

    ``data``: the site's rows (features (n, ...) float32, labels (n,)); the probe
    batch is its first ``min(batch_size, n)`` rows, correctness is checked on its
    first :data:`TRUTH_ROWS`. ``make_step`` builds the step the round takes (loss,
    augmentation) from a model and an optimizer (Opacus' wrapped ones); it is
    timed. ``check_step`` (default ``make_step``) is the same step without
    augmentation, which the correctness check runs (augmentation multiplicity
    averages per-sample rows the same way in every mode). ``key``: what else the
    step depends on (task, loss, augmentation), for the per-process cache. The
    model itself is not changed.

    Raises :class:`ConfigError` (one line; which modes failed and which differ,
    never their errors, which stay in the site's log) when the model's output
    for a row depends on the other rows of its batch, when no mode is correct,
    or when ``hooks`` fails and there is no truth to check another by.
    """
    check_step = check_step or make_step
    x, y = data.tensors[0], data.tensors[1]
    rows = min(batch_size, len(x))
    batch = (x[:rows].to(device), y[:rows].to(device))
    checked = min(rows, TRUTH_ROWS)
    _refuse_mixed_rows(model, batch[0][:checked])
    truth = _truth(model, batch, max_grad_norm, check_step, checked)
    cache_key = (_signature(model), tuple(x.shape[1:]), rows, str(device), *key)
    cached = _chosen.get(cache_key)
    settings = (lr, momentum, max_grad_norm, make_step, check_step)
    if cached is not None and truth is not None:
        kept = _probe(model, batch, cached.mode, settings, checked, timed=0)[0]
        if _same(kept, truth):
            return cached  # the timing is kept; correctness is checked each time
    updates: dict[str, tuple[list[torch.Tensor], float]] = {}
    failed: dict[str, str] = {}
    for mode in MODES:
        try:
            updates[mode] = _probe(model, batch, mode, settings, checked)
        except Exception as exc:  # a mode that fails is left out
            failed[mode] = first_line(exc)
    for mode, why in failed.items():
        logger.warning("grad-sample mode %s fails: %s", mode, why)
    basis = "the per-row gradient" if truth is not None else "hooks' gradient"
    if truth is None and REFERENCE not in updates:
        raise ConfigError(
            "model: Opacus cannot train it (hooks fails; its error is in the "
            "site's log)"
        )
    reference = truth if truth is not None else updates[REFERENCE][0]
    times = {m: u[1] for m, u in updates.items() if _same(u[0], reference)}
    left_out = {m: "fails" for m in failed} | {
        m: f"differs from {basis}" for m in updates if m not in times
    }
    if not times:
        reasons = ", ".join(f"{m} {left_out[m]}" for m in MODES)
        raise ConfigError(
            "model: no Opacus grad-sample mode computes its per-example gradients "
            f"right ({reasons}): a parameter used outside its own layer, a layer "
            "Opacus gets wrong or a trainable weight the model never uses"
        )
    choice = ModeChoice(min(times, key=times.__getitem__), times, left_out)
    logger.info(
        "grad-sample mode %s, checked against %s (seconds per step: %s; left out: %s)",
        choice.mode,
        basis,
        ", ".join(f"{m} {s:.4f}" for m, s in times.items()),
        "; ".join(f"{m}: {why}" for m, why in left_out.items()) or "none",
    )
    if truth is not None:  # without a truth, measured afresh each time
        _chosen[cache_key] = choice
    return choice


def _refuse_mixed_rows(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ConfigError` when a row's output depends on the other rows of
    its batch: the model's output for row 0 with the other rows as they are, and
    with them halved, under one seed (dropout masks alike), must agree (a
    permutation would not do: a batch mean does not see it). Per-
    example clipping bounds nothing for such a model (BatchNorm-like layers,
    functional ``batch_norm`` included)."""
    if len(x) < 2:
        return
    other = torch.cat([x[:1], 0.5 * x[1:]])
    outputs = []
    for rows in (x, other):
        with _isolated(x.device, PROBE_SEED), torch.no_grad():
            net = copy.deepcopy(model)
            net.train()
            try:
                outputs.append(net(rows)[:1])
            except Exception:  # the modes will say why it cannot run
                return
    if not torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5):
        raise ConfigError(
            "model: a row's output depends on the other rows of its batch (a "
            "batch-norm-like layer), so clipping each example's gradient would "
            "not bound it: DP-SGD cannot train it"
        )


def _probe(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    mode: str,
    settings: tuple[float, float, float, StepFactory, StepFactory],
    checked: int,
    timed: int = TIMED_STEPS,
) -> tuple[list[torch.Tensor], float]:
    """One mode on a copy of ``model``: its clipped, summed, scaled gradient
    (noise 0) on the first ``checked`` rows (dropout off), then the best time of
    ``timed`` steps on the whole batch (inf for none)."""
    from opacus import PrivacyEngine

    lr, momentum, max_grad_norm, make_step, check_step = settings
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
            with _dropout_off(net):
                check_step(wrapped, dp_optimizer)(x[:checked], y[:checked])
            # DPOptimizer leaves the clipped, summed, scaled gradient in p.grad
            grads = [_grad(p) for p in net.parameters()]
            step = make_step(wrapped, dp_optimizer)
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
    return grads, best


def _truth(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    max_grad_norm: float,
    check_step: StepFactory,
    checked: int,
) -> list[torch.Tensor] | None:
    """DP-SGD's gradient on the first ``checked`` rows, by definition and without
    Opacus: each row's gradient from its own backward pass, clipped by Opacus'
    factor min(1, C / (norm + 1e-6)), summed and divided by the batch's size
    (what the DPOptimizer leaves in ``p.grad`` with noise 0). None when the
    model cannot run one row, or when two seeds give two truths (randomness in
    its own code)."""
    x, y = batch
    found = []
    for seed in (PROBE_SEED, PROBE_SEED + 1):
        with _isolated(x.device, seed):
            net = copy.deepcopy(model)
            net.train()
            recorder = _Recorder(net.parameters())
            step = check_step(net, recorder)
            total = [torch.zeros_like(p) for p in net.parameters()]
            try:
                with _dropout_off(net):
                    for i in range(checked):
                        step(x[i : i + 1], y[i : i + 1])
                        norms = torch.stack([g.norm(2) for g in recorder.grads])
                        factor = (max_grad_norm / (norms.norm(2) + 1e-6)).clamp(max=1.0)
                        for t, g in zip(total, recorder.grads, strict=True):
                            t.add_(g * factor)
            except Exception:  # a model that cannot run one row: no truth
                return None
        found.append([t / len(x) for t in total])
    return found[0] if _same(found[1], found[0]) else None


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()


class _Recorder(torch.optim.Optimizer):
    """An optimizer whose step only keeps the gradients (zeros for unused ones)."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {})
        self.grads: list[torch.Tensor] = []

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.grads = [_grad(p) for group in self.param_groups for p in group["params"]]


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
    """Each parameter's gradient within :data:`RTOL` of the reference's norm
    (floored at :data:`RTOL` of the whole gradient's norm, for parameters whose
    gradient is tiny). Measured: float32 per-row and batched sums differ by up to
    1.8% on resnet18 (GroupNorm on 2x2 maps); wrong modes (hooks with circular,
    reflect or replicate padding, tied weights) by 48-80%."""
    if len(update) != len(reference) or any(
        u.shape != r.shape for u, r in zip(update, reference, strict=False)
    ):
        return False
    total = torch.stack([r.norm(2) for r in reference]).norm(2) if reference else 0
    return all(
        bool((u - r).norm(2) <= RTOL * torch.clamp(r.norm(2), min=RTOL * total) + 1e-12)
        for u, r in zip(update, reference, strict=True)
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
    return None if code is None else (code.co_code, code.co_consts, code.co_names)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
