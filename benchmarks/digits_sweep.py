"""Digits cnn tuning at epsilon 3: an in-process stand-in for ``fedvault simulate
--dataset digits --model cnn --sites 5`` (docs/models.md, "Measured").

Five IID sites of scikit-learn's digits (80/20 test split, each site holding back
15% for validation as simulate does), each training through the site's own DP-SGD
path (:func:`fedvault.client.training.train_private`), FedAvg by rows, no Flower
transport. sigma is planned for epsilon 3 at delta 1e-5 composed (RDP) with the
site's other releases: the summary, planned alone for ``summary_share`` of epsilon,
and one validation release a round for 5% of it over all rounds.

``python -m benchmarks.digits_sweep '{"rounds": 30}' '{"rounds": 30, "seed": 1}'``
prints one JSON line per setting: the setting, test accuracy, sigma, seconds.
``"shape"`` compares the cnn with the shapes it replaced: ``"two-blocks-dense"``
(the cnn before December 2026: two conv blocks of 16 and 32 channels, then
Dense(hidden)-ReLU before the head) and ``"two-blocks"`` (the same without the
dense layer).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from typing import Any

DELTA, SITES, METRICS_SHARE = 1e-5, 5, 0.05
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _epsilon(parts: list[tuple[float, float, int]]) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = sum(
        compute_rdp(q=q, noise_multiplier=s, steps=n, orders=ORDERS)
        for q, s, n in parts
    )
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=DELTA)[0])


def sigma_for(eps: float, q: float, steps: int, rounds: int, share: float) -> float:
    """DP-SGD's noise multiplier beside the summary and validation releases."""
    from fedvault.common.privacy import plan_noise

    def alone(target: float, n: int) -> tuple[float, float, int]:
        sigma = plan_noise(target_epsilon=target, delta=DELTA, sample_rate=1.0, steps=n)
        return (1.0, sigma, n)

    parts = [alone(share * eps, 1), alone(METRICS_SHARE * eps, rounds)]
    lo, hi = 0.3, 100.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _epsilon([*parts, (q, mid, steps)]) > eps else (lo, mid)
    return hi


def _data(seed: int) -> tuple[list[Any], Any, Any]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x / 16.0, y, test_size=0.2, random_state=seed, stratify=y
    )

    def images(a: Any) -> Any:
        return torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)

    order = np.random.default_rng(seed).permutation(len(xtr))
    sites = []
    for rows in np.array_split(order, SITES):
        rows = rows[: len(rows) - round(len(rows) * 0.15)]
        sites.append(TensorDataset(images(xtr[rows]), torch.tensor(ytr[rows])))
    return sites, images(xte), torch.tensor(yte)


def _model(shape: str, hidden: int) -> Any:
    from torch import nn

    from fedvault.common.model_zoo import InputSpec, prepare_for_dp
    from fedvault.common.models import build_model

    if shape == "cnn":
        spec = InputSpec.image(1, 8, 8)
        return prepare_for_dp(
            build_model("cnn", input_spec=spec, num_classes=10, hidden=hidden)
        )[0]
    if shape not in ("two-blocks", "two-blocks-dense"):
        raise ValueError(f"unknown shape {shape!r}")
    layers: list[nn.Module] = []
    channels = 1
    for out in (16, 32):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(4, out)]
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    layers.append(nn.Flatten())
    if shape == "two-blocks":
        return nn.Sequential(*layers, nn.Linear(128, 10))
    return nn.Sequential(
        *layers, nn.Linear(128, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def run(
    *,
    shape: str = "cnn",
    rounds: int = 30,
    lr: float = 0.2,
    batch: int = 64,
    momentum: float = 0.9,
    hidden: int = 32,
    clip: float = 1.0,
    seed: int = 0,
    epsilon: float = 3.0,
    summary_share: float = 0.2,
) -> dict[str, Any]:
    """One federated training; its test accuracy, sigma and seconds."""
    import torch

    from fedvault.client.training import LocalSettings, dp_schedule, train_private

    torch.manual_seed(seed)
    sites, x_test, y_test = _data(seed)
    local = LocalSettings(
        num_classes=10, lr=lr, momentum=momentum, epochs=1, batch_size=batch
    )
    model = _model(shape, hidden)
    plans = []
    for data in sites:
        sched = dp_schedule(len(data), batch)
        steps = rounds * sched.steps_per_epoch
        sigma = sigma_for(epsilon, sched.sample_rate, steps, rounds, summary_share)
        plans.append(sched.plan(noise_multiplier=sigma, epochs=1))
    started = time.perf_counter()
    for _ in range(rounds):
        states = []
        for data, plan in zip(sites, plans, strict=True):
            site_model = copy.deepcopy(model)
            train_private(site_model, data, local, plan=plan, max_grad_norm=clip)
            states.append((site_model.state_dict(), len(data)))
        total = sum(w for _, w in states)
        model.load_state_dict(
            {k: sum(w * s[k] for s, w in states) / total for k in states[0][0]}
        )
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return {
        "accuracy": round(accuracy, 4),
        "sigma": round(plans[0].noise_multiplier, 3),
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        setting = json.loads(arg)
        print(json.dumps(setting), json.dumps(run(**setting)), flush=True)
