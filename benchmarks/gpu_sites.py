"""B10, second part: fedvault's own site training step on CUDA against the CPU.

Five sites in one process, each running the site's DP-SGD path
(:func:`fedvault.client.training.train_private` with ``LocalSettings.device``) on
its IID share of scikit-learn's digits, the coordinator averaging the updates
(FedAvg weighted by rows). Flower's transport is left out (it is not installed on
the GPU machine): the figures are the sites' training, the part a GPU changes.
sigma is planned by fedvault's planner for epsilon 3 at delta 1e-5 over all
rounds (RDP), as a site would for its DP-SGD share.

Run on a machine with CUDA: ``python -m benchmarks.gpu_sites OUT.json``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

SITES, EPSILON, DELTA = 5, 3.0, 1e-5


def _data(name: str) -> tuple[list[Any], Any]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.nn.functional import interpolate
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        (x / 16.0 - 0.5) / 0.5, y, test_size=0.2, random_state=0, stratify=y
    )

    def images(a: Any) -> Any:
        t = torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)
        if name == "resnet18":
            t = interpolate(t, size=(32, 32), mode="bilinear").repeat(1, 3, 1, 1)
        return t

    order = np.random.default_rng(0).permutation(len(xtr))
    shares = np.array_split(order, SITES)
    sites = [
        TensorDataset(images(xtr[s]), torch.tensor(ytr[s], dtype=torch.int64))
        for s in shares
    ]
    return sites, TensorDataset(images(xte), torch.tensor(yte, dtype=torch.int64))


def _model(name: str) -> Any:
    from fedvault.common.model_zoo import InputSpec, prepare_for_dp
    from fedvault.common.models import build_model

    big = name == "resnet18"
    spec = InputSpec.image(3, 32, 32) if big else InputSpec.image(1, 8, 8)
    return prepare_for_dp(
        build_model(name, input_spec=spec, num_classes=10, hidden=32)
    )[0]


def federate(
    name: str, device: str, *, rounds: int, lr: float, batch: int, momentum: float
) -> dict[str, Any]:
    """FedAvg over the sites' own DP-SGD rounds; test accuracy and timings."""
    import copy

    import torch

    from fedvault.client.training import LocalSettings, dp_schedule, train_private
    from fedvault.common.privacy import Step, plan_noise

    torch.manual_seed(0)
    sites, test = _data(name)
    dev = torch.device(device)
    local = LocalSettings(
        num_classes=10,
        lr=lr,
        momentum=momentum,
        epochs=1,
        batch_size=batch,
        device=dev,
    )
    plans = []
    for data in sites:
        sched = dp_schedule(len(data), batch)
        sigma = plan_noise(
            target_epsilon=EPSILON,
            delta=DELTA,
            sample_rate=sched.sample_rate,
            steps=rounds * sched.steps_per_epoch,
        )
        plans.append(
            Step(
                noise_multiplier=sigma,
                sample_rate=sched.sample_rate,
                steps=sched.steps_per_epoch,
            )
        )
    model = _model(name).to(dev)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        states, weights = [], []
        for data, plan in zip(sites, plans, strict=True):
            site_model = copy.deepcopy(model)
            train_private(site_model, data, local, plan=plan, max_grad_norm=1.0)
            states.append(site_model.state_dict())
            weights.append(len(data))
        total = sum(weights)
        model.load_state_dict(
            {
                k: sum(w * s[k].float() for s, w in zip(states, weights, strict=True))
                / total
                for k in states[0]
            }
        )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        accuracy = float((model(x.to(dev)).argmax(1).cpu() == y).float().mean())
    return {
        "model": name,
        "device": device,
        "rounds": rounds,
        "lr": lr,
        "batch": batch,
        "momentum": momentum,
        "accuracy": accuracy,
        "sigma": [round(p.noise_multiplier, 3) for p in plans],
        "first_round_s": seconds[0],
        "later_round_s": sum(seconds[1:]) / max(len(seconds) - 1, 1),
        "total_s": sum(seconds),
    }


def run(path: str | None = None) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"runs": []}
    cases = [
        ("cnn", "cuda", dict(rounds=20, lr=0.1, batch=64, momentum=0.9)),
        ("cnn", "cpu", dict(rounds=20, lr=0.1, batch=64, momentum=0.9)),
        ("cnn", "cuda", dict(rounds=40, lr=0.05, batch=64, momentum=0.9)),
        ("resnet18", "cuda", dict(rounds=20, lr=0.05, batch=64, momentum=0.9)),
        ("resnet18", "cpu", dict(rounds=1, lr=0.05, batch=64, momentum=0.9)),
    ]
    for name, device, kw in cases:
        if device == "cuda" and not torch.cuda.is_available():
            continue
        res = federate(name, device, **kw)  # type: ignore[arg-type]
        out["runs"].append(res)
        print(json.dumps(res), flush=True)
        if path:  # after each case: a run stopped at its time limit keeps the rest
            with open(path, "w") as f:
                json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else None)
