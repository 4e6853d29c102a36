"""Augmentation multiplicity inside Opacus' DP-SGD step (internal).

.. warning:: Privacy mechanism internals. Use through the site's training loop.

Each example of a Poisson batch goes through ``copies`` augmented versions
(:func:`fedvault.common.augment.augment_batch`, example-major). After the backward
pass each parameter's per-sample gradients (``p.grad_sample``, one row per copy)
are averaged over each example's copies, leaving one row per example, *before*
Opacus' ``DPOptimizer`` clips them to the clipping norm and adds noise. One
example's averaged gradient has norm at most C after clipping, as without
augmentation: the sensitivity, the noise and the accountant's epsilon do not
change (De et al. 2022). The mean loss over all copies is what is differentiated,
and Opacus scales per-sample gradients by the number of rows it saw, so each row is
the gradient of one copy's own loss.

Works with Opacus' ``hooks``, ``functorch`` and ``ew`` modes (they fill
``p.grad_sample``); not with ghost clipping, which never forms per-sample
gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedvault.client._gsm_mode import noise_only_step
from fedvault.common.augment import Augmentation, augment_batch, repeat_targets

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Mean loss of outputs and *integer/float labels* as the site stores them."""


def average_copies(module: nn.Module, copies: int) -> None:
    """Replace each parameter's ``grad_sample`` of shape (b * copies, ...) by the
    mean over each example's consecutive ``copies`` rows, shape (b, ...).

    Raises :class:`ValueError` if a parameter holds accumulated per-sample gradients
    of several backward passes, or a row count that is not a multiple of
    ``copies``.
    """
    if copies == 1:
        return
    for p in module.parameters():
        rows = getattr(p, "grad_sample", None)
        if rows is None:
            continue
        if not isinstance(rows, torch.Tensor):
            raise ValueError("per-sample gradients of several backward passes")
        if len(rows) % copies:
            raise ValueError(f"{len(rows)} per-sample rows for {copies} copies")
        averaged = rows.view(len(rows) // copies, copies, *rows.shape[1:]).mean(1)
        setattr(p, "grad_sample", averaged)  # noqa: B010 (Opacus' attribute)


def augmented_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Loss,
    augmentation: Augmentation,
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A DP-SGD step on a batch with augmentation multiplicity.

    ``module`` is Opacus' ``GradSampleModule`` and ``optimizer`` its
    ``DPOptimizer``. The step takes images (b, c, h, w) and labels (b,) on the
    device, trains on ``augmentation.copies`` augmented copies of each image,
    averages per-sample gradients per example, then lets the optimizer clip, noise
    and step. It returns the batch's summed loss (mean over copies, times b), the
    quantity the training loop adds up.
    """

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        if len(y) == 0:
            # An empty Poisson batch is still a step (pure noise).
            noise_only_step(optimizer)
            return 0.0
        copies = augmentation.copies
        out = module(augment_batch(x, augmentation))
        batch_loss: Any = loss(out, repeat_targets(y, copies))
        batch_loss.backward()
        average_copies(module, copies)
        optimizer.step()
        return float(batch_loss.item()) * len(y)

    return step
