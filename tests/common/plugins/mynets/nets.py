"""Factories as a site's own package would define them: ``factory(spec, outputs)``."""

from __future__ import annotations

import torch
from torch import nn


def build(spec, outputs):
    """Tables: Dense(16)-BatchNorm-ReLU -> head; images: conv-BatchNorm -> head.

    BatchNorm on purpose: prepare_for_dp must swap it for GroupNorm.
    """
    if spec.kind == "tabular":
        return nn.Sequential(
            nn.Linear(spec.features, 16),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.Linear(16, outputs),
        )
    return nn.Sequential(
        nn.Conv2d(spec.channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, outputs),
    )


class _Running(nn.Module):
    """A trainable layer that keeps a running statistic: Opacus cannot privatize it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.register_buffer("seen", torch.zeros(width))

    def forward(self, x):
        return x * self.scale


def with_running_stats(spec, outputs):
    return nn.Sequential(nn.Linear(spec.features, outputs), _Running(outputs))


class _Scale(nn.Module):
    """A learned per-feature scale: Opacus' hooks and functorch modes take it,
    its expanded-weights mode cannot (PyTorch has no expanded rule for mul)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.scale


def scaled(spec, outputs):
    """Tables: Dense(16)-scale-ReLU -> head. fedvault's own DP-SGD steps do not
    take the scale layer, so it trains under Opacus in the mode the site measures."""
    return nn.Sequential(
        nn.Linear(spec.features, 16), _Scale(16), nn.ReLU(), nn.Linear(16, outputs)
    )


class _Centre(nn.Module):
    """Subtracts the batch's mean: each row's output depends on the other rows."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def mixes_rows(spec, outputs):
    """Tables: Dense(16)-scale-centre-ReLU -> head. The centring mixes a batch's
    rows, so per-example clipping would bound nothing: the sites refuse it."""
    return nn.Sequential(
        nn.Linear(spec.features, 16),
        _Scale(16),
        _Centre(),
        nn.ReLU(),
        nn.Linear(16, outputs),
    )


class _Tracking(nn.Module):
    """No weights of its own: it keeps the mean of what it sees, and a constant."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("offset", torch.ones(width), persistent=False)

    def forward(self, x):
        if self.training:
            self.mean = x.detach().mean(0)
        return x + self.offset


def with_a_tracked_mean(spec, outputs):
    return nn.Sequential(_Tracking(spec.features), nn.Linear(spec.features, outputs))


def with_a_constant(spec, outputs):
    model = nn.Sequential(nn.Linear(spec.features, outputs))
    model.register_buffer("scale", torch.ones(1), persistent=False)
    return model


def local_lstm(spec, outputs):
    class Recurrent(nn.Module):  # defined in the factory: cannot be pickled
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(spec.features, outputs)

        def forward(self, x):
            return self.lstm(x.unsqueeze(0))[0][0]

    return Recurrent()


def raises(spec, outputs):
    raise RuntimeError("boom: my factory failed\nsecond line")


def takes_nothing():
    return nn.Linear(1, 1)


def not_a_module(spec, outputs):
    return "a string"


def wrong_width(spec, outputs):
    return nn.Sequential(nn.Linear(spec.features, outputs + 1))


NOT_CALLABLE = 3


class _Silent(nn.Module):
    def forward(self, x):
        raise RuntimeError()  # no message at all


def fails_without_a_message(spec, outputs):
    return _Silent()
