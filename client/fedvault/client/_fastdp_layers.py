"""Fast DP-SGD step for small sequential conv nets — PRIVACY-CRITICAL internals.

.. warning:: Hazmat. Use :func:`fedvault.client.training.train_private`, which picks
   this path only for models :func:`supports` accepts and keeps Opacus' Poisson
   sampling and accountant. ``tests/privacy/test_fastdp.py`` checks, step for step
   and with the same random numbers, that this computes what Opacus'
   ``PrivacyEngine`` + ``DPOptimizer`` compute (momentum included).

The step is Opacus' (flat clipping, ``loss_reduction="mean"``, see
:mod:`fedvault.client._fastdp`), computed without Opacus' machinery: one forward
pass keeping each trained layer's input, one backward pass to the layers' *outputs*
only (no ordinary weight gradient, which DP-SGD would throw away), then per layer
the per-sample gradients from the output gradients and inputs: a batched matrix
product of the unfolded input for ``nn.Conv2d`` (what Opacus' conv sampler
computes), the normalized input times the output gradient for ``nn.GroupNorm``, and
for ``nn.Linear`` no per-sample tensor at all (norm ||g|| ||a||, clipped sum
(c * G)^T A, book-keeping). The clipped sum, noise (one ``torch.normal`` per
parameter, in parameter order) and the division by the expected batch size are
Opacus'; the noisy mean gradient goes to ``p.grad`` and the run's SGD optimizer
(with its momentum) takes the step, as ``DPOptimizer`` hands it to the optimizer it
wraps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from fedvault.client._fastdp import (
    ACTIVATIONS,
    noisy,
    plain_layers,
    recorded_forward,
)

_PARAM_FREE = (
    *ACTIVATIONS,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Unflatten,
)
_TRAINED = (nn.Linear, nn.Conv2d, nn.GroupNorm)
_PerSample = list[torch.Tensor]


def supports(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d`` (no groups,
    zero padding given as numbers), affine ``nn.GroupNorm`` and parameter-free
    layers (element-wise activations, pooling, flattening), each used once, with
    every parameter trained and none shared: fedvault's ``cnn``, and its MLPs.
    Anything else (tied or frozen weights, other layers) takes Opacus' engine.
    """
    layers = plain_layers(model)
    if layers is None:
        return False
    return all(_layer_ok(m) for m in layers) and any(
        isinstance(m, _TRAINED) for m in layers
    )


def _layer_ok(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return (
            m.groups == 1
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
        )
    if isinstance(m, nn.GroupNorm):
        return m.affine
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, _PARAM_FREE) and not any(True for _ in m.parameters())


def dp_sgd_step(
    model: nn.Sequential,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
) -> float:
    """One DP-SGD step on ``model`` (through ``optimizer``, an optimizer over
    ``model.parameters()`` in their order); returns the batch's summed loss (0 for
    an empty batch, which is still a step: noise only).

    ``x``: the batch's inputs, b >= 0 rows; ``y``: targets as ``per_sample_loss``
    takes them; ``per_sample_loss(out, y)`` returns shape (b,). Per-sample
    gradients are clipped to ``max_grad_norm`` and summed, noise of standard
    deviation ``noise_multiplier * max_grad_norm`` is added per coordinate, and the
    result divided by ``expected_batch_size`` is the gradient the optimizer steps
    on.
    """
    params = list(model.parameters())
    if len(x) == 0:
        sums = [torch.zeros_like(p) for p in params]
        loss = 0.0
    else:
        sums, loss = _clipped_sums(model, x, y, per_sample_loss, max_grad_norm)
    std = noise_multiplier * max_grad_norm
    with torch.no_grad():
        for p, summed in zip(params, sums, strict=True):
            p.grad = noisy(summed, std) / expected_batch_size
    optimizer.step()
    return loss


def _clipped_sums(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_grad_norm: float,
) -> tuple[list[torch.Tensor], float]:
    """The per-sample clipped gradient sums, in parameter order, and the loss."""
    h, trained, inputs, outputs = recorded_forward(model, x, _TRAINED)
    losses = per_sample_loss(h, y)
    grads = torch.autograd.grad(losses.sum(), outputs)
    with torch.no_grad():
        squared = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        per_layer = []
        for m, a, g in zip(trained, inputs, grads, strict=True):
            rows = _per_sample(m, a, g)
            for r in rows:
                squared += r.flatten(1).pow(2).sum(1)
            per_layer.append(rows)
        factor = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        sums = []
        for m, a, g, rows in zip(trained, inputs, grads, per_layer, strict=True):
            sums += _summed(m, a, g, rows, factor)
    return sums, float(losses.detach().sum())


def _per_sample(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> _PerSample:
    """Tensors whose per-row squared sums add up to each sample's squared gradient
    norm for ``m``'s parameters (for Linear: the factors of the outer product)."""
    b = len(a)
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):  # refused by supports()
            raise TypeError("conv padding given by name")
        cols = functional.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)
        out = g.reshape(b, m.out_channels, -1)
        weight = torch.bmm(out, cols.transpose(1, 2))
        return [weight] if m.bias is None else [weight, out.sum(2)]
    if isinstance(m, nn.GroupNorm):
        normed = functional.group_norm(a, m.num_groups, eps=m.eps)
        return [
            (normed * g).reshape(b, m.num_channels, -1).sum(2),
            g.reshape(b, m.num_channels, -1).sum(2),
        ]
    if a.dim() != 2:  # nn.Linear
        weight = torch.einsum("n...o,n...i->noi", g, a)
        return [weight] if m.bias is None else [weight, g.flatten(1, -2).sum(1)]
    norm = g.norm(dim=1) * a.norm(dim=1)  # ||g a^T|| = ||g|| ||a||
    return [norm.unsqueeze(1)] if m.bias is None else [norm.unsqueeze(1), g]


def _summed(
    m: nn.Module,
    a: torch.Tensor,
    g: torch.Tensor,
    rows: _PerSample,
    factor: torch.Tensor,
) -> list[torch.Tensor]:
    """Sum over the batch of each parameter's per-sample gradient times ``factor``,
    in the layer's parameter order (weight, bias)."""
    if isinstance(m, nn.Linear) and a.dim() == 2:
        clipped = g * factor.unsqueeze(1)
        weight = clipped.t() @ a
        return [weight] if m.bias is None else [weight, clipped.sum(0)]
    params = list(m.parameters())  # weight, then bias
    return [
        (factor @ r.flatten(1)).view_as(p) for p, r in zip(params, rows, strict=True)
    ]
