"""Fast DP-SGD steps for plain MLPs — PRIVACY-CRITICAL internals.

.. warning:: Hazmat. Use :func:`fedvault.client.training.train_private`, which picks
   this path only for models it supports and keeps Opacus' Poisson sampling and
   accountant. Any change here must keep ``tests/privacy/test_fastdp.py`` passing:
   it checks, step for step and with the same random numbers, that this computes
   exactly what Opacus' ``PrivacyEngine`` + ``DPOptimizer`` compute.

What Opacus' DPOptimizer does per step (flat clipping, ``loss_reduction="mean"``):
per-sample gradients g_i of every parameter; per-sample norm ||g_i|| over all
parameters; clip factor c_i = min(1, C / (||g_i|| + 1e-6)); sum_i c_i g_i; add
N(0, (sigma C)^2) noise per coordinate (one ``torch.normal`` per parameter, in
parameter order); divide by the expected batch size int(n q); SGD step.

For ``nn.Linear`` layers the per-sample weight gradient is an outer product
g_i a_i^T of the layer's output gradient and input, so its norm is
||g_i|| ||a_i|| and the clipped sum is (c * G)^T A: no per-sample gradient tensor is
ever built ("book-keeping"; Goodfellow 2015, Bu et al. 2023). That is the whole
saving: one ordinary backward pass to the layer outputs, then one matrix product per
layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.GELU)


def supports(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of ``nn.Linear`` and parameter-free
    element-wise activations (the MLP and logistic regression fedvault builds),
    each layer used once, with no parameter shared and every parameter trained.

    A layer used twice (tied weights) sums two per-sample gradients before the
    norm, and a frozen parameter is neither clipped nor noised by Opacus; this step
    does neither, so such models take Opacus' own path.
    """
    layers = plain_layers(model)
    return (
        layers is not None
        and all(
            isinstance(m, nn.Linear)
            or (isinstance(m, ACTIVATIONS) and not any(True for _ in m.parameters()))
            for m in layers
        )
        and any(isinstance(m, nn.Linear) for m in layers)
    )


def plain_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers of an ``nn.Sequential`` that uses each layer once, shares no
    parameter and trains every parameter; None for any other model."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model)
    if len({id(m) for m in layers}) != len(layers):
        return None
    params = list(model.parameters())
    shared = sum(1 for _ in model.named_parameters(remove_duplicate=False))
    if shared != len(params) or not all(p.requires_grad for p in params):
        return None
    return layers


def dp_sgd_step(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    lr: float,
) -> float:
    """One DP-SGD step on ``model`` in place; returns the batch's summed loss (0 if
    the batch is empty, which is still a step: noise only).

    ``x``: float inputs, shape (b, in_features), b >= 0; ``y``: targets as
    ``per_sample_loss`` takes them (e.g. float (b, 1) for a single logit, int64 (b,)
    for classes); ``per_sample_loss(out, y)`` returns shape (b,). Noise has standard
    deviation ``noise_multiplier * max_grad_norm`` per coordinate of the summed,
    clipped gradient, which is then divided by ``expected_batch_size``.
    """
    std = noise_multiplier * max_grad_norm
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if len(x) == 0:
        sums = [torch.zeros_like(p) for lin in linears for p in _params(lin)]
        _noisy_update(linears, sums, std, expected_batch_size, lr)
        return 0.0
    h, _, inputs, outputs = recorded_forward(model, x, (nn.Linear,))
    losses = per_sample_loss(h, y)
    grads = torch.autograd.grad(losses.sum(), outputs)
    with torch.no_grad():
        squared = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for a, g, lin in zip(inputs, grads, linears, strict=True):
            g2 = g.pow(2).sum(dim=1)
            squared += g2 * a.pow(2).sum(dim=1)
            if lin.bias is not None:
                squared += g2
        factor = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        sums = []
        for a, g, lin in zip(inputs, grads, linears, strict=True):
            clipped = g * factor.unsqueeze(1)
            sums.append(clipped.t() @ a)
            if lin.bias is not None:
                sums.append(clipped.sum(dim=0))
        _noisy_update(linears, sums, std, expected_batch_size, lr)
    return float(losses.detach().sum())


def recorded_forward(
    model: nn.Sequential, x: torch.Tensor, kinds: tuple[type[nn.Module], ...]
) -> tuple[torch.Tensor, list[nn.Module], list[torch.Tensor], list[torch.Tensor]]:
    """Forward ``x`` through ``model``: its output, the layers of ``kinds``, the
    (detached) input and the output of each."""
    layers, inputs, outputs = [], [], []
    h = x
    for m in model:
        if isinstance(m, kinds):
            layers.append(m)
            inputs.append(h.detach())
            h = m(h)
            outputs.append(h)
        else:
            h = m(h)
    return h, layers, inputs, outputs


def _params(lin: nn.Linear) -> list[torch.Tensor]:
    return [lin.weight] if lin.bias is None else [lin.weight, lin.bias]


def _noisy_update(
    linears: list[nn.Linear],
    sums: list[torch.Tensor],
    std: float,
    expected_batch_size: int,
    lr: float,
) -> None:
    """Noise in parameter order (as Opacus draws it), scale, SGD step."""
    params = [p for lin in linears for p in _params(lin)]
    with torch.no_grad():
        for p, summed in zip(params, sums, strict=True):
            p.add_(noisy(summed, std) / expected_batch_size, alpha=-lr)


def noisy(summed: torch.Tensor, std: float) -> torch.Tensor:
    """``summed`` plus Gaussian noise of standard deviation ``std`` per coordinate,
    drawn as Opacus' ``_generate_noise`` draws it (one ``torch.normal`` of the
    tensor's shape from torch's global generator; nothing drawn for std 0)."""
    if std <= 0:
        return summed
    return summed + torch.normal(
        mean=0, std=std, size=summed.shape, device=summed.device, dtype=summed.dtype
    )
