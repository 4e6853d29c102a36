"""B2: framework overhead — `fedvault simulate` vs a plain PyTorch FedAvg loop.

Both do the same local training (fedvault's own DP-SGD / SGD trainer, one thread a
site) on the same partitions with the same seeds, the same federated preprocessing,
and evaluate the global model on the same test split every round. The simulation's
round time is measured from its own progress events (first round start to last
round end), so the one-time start-up (Flower SuperLink, Ray, imports, federated
preprocessing) is reported on its own.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

SITES, ROUNDS = 5, 10
LARGE_ROWS = 20_000  # synthetic, 30 features: ~3,200 training rows a site


def plain_loop(*, dp: bool, rounds: int, sites: int, data: str = "") -> dict[str, Any]:
    """The same federation as one Python loop: no Flower, no messages."""
    import torch

    from fedvault.client.training import (
        LocalSettings,
        dp_schedule,
        train_plain,
        train_private,
    )
    from fedvault.common.config import TrainingConfig
    from fedvault.common.evaluation import evaluate
    from fedvault.common.models import build_model
    from fedvault.common.preprocessing import merge_summaries, site_summary
    from fedvault.common.privacy import plan_noise
    from fedvault.server import simulate as sim

    torch.set_num_threads(1)
    cfg = sim.load_config({"sites": sites, "rounds": rounds, "dp": dp, "data": data})
    prepared = sim.prepare_data(cfg)
    t: TrainingConfig = prepared.training
    parts = [part for _, part in prepared.sites]
    prep = merge_summaries([site_summary(p, "target") for p in parts], "target")
    tensors = [torch.from_numpy(prep.transform(p)) for p in parts]
    labels = [torch.from_numpy(prep.encode_labels(p["target"])) for p in parts]
    test = prepared.test
    assert test is not None
    x_test = torch.from_numpy(prep.transform(test))
    y_test = torch.from_numpy(prep.encode_labels(test["target"]))
    torch.manual_seed(0)
    model = build_model(t.model, in_features=prep.num_features, num_classes=2)
    local = LocalSettings(
        num_classes=2, lr=t.lr, epochs=t.local_epochs, batch_size=t.batch_size
    )
    schedules = [dp_schedule(len(x), t.batch_size) for x in tensors]
    plans = [
        s.plan(
            noise_multiplier=plan_noise(
                target_epsilon=t.epsilon,
                delta=t.delta,
                sample_rate=s.sample_rate,
                steps=rounds * s.steps_per_epoch,
            ),
            epochs=t.local_epochs,
        )
        for s in schedules
    ]
    start = time.perf_counter()
    for _ in range(rounds):
        states, weights = [], []
        for x, y, plan in zip(tensors, labels, plans, strict=True):
            site_model = build_model(
                t.model, in_features=prep.num_features, num_classes=2
            )
            site_model.load_state_dict(model.state_dict())
            data = torch.utils.data.TensorDataset(x, y)
            if dp:
                train_private(
                    site_model, data, local, plan=plan, max_grad_norm=t.max_grad_norm
                )
            else:
                train_plain(site_model, data, local)
            states.append(site_model.state_dict())
            weights.append(len(x))
        total = sum(weights)
        model.load_state_dict(
            {
                k: sum(s[k] * w for s, w in zip(states, weights, strict=True)) / total
                for k in states[0]
            }
        )
        metrics = evaluate(model, x_test, y_test, num_classes=2)
    seconds = time.perf_counter() - start
    return {"rounds_seconds": seconds, "accuracy": metrics.accuracy}


def simulation(*, dp: bool, rounds: int, sites: int, data: str = "") -> dict[str, Any]:
    from fedvault.server import simulate as sim

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = sim.load_config(
            {"sites": sites, "rounds": rounds, "dp": dp, "data": data}
        )
        called = time.time()
        summary = sim.run(cfg, out)
        finished = time.time()
        events = [
            json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()
        ]
    ready = next(e["time"] for e in events if e["event"] == "ready")
    round_ends = [e["time"] for e in events if e["event"] == "round"]
    first_round_seconds = next(e["seconds"] for e in events if e["event"] == "round")
    rounds_seconds = round_ends[-1] - ready
    return {
        "startup_seconds": ready - called,
        "rounds_seconds": rounds_seconds,
        "first_round_seconds": first_round_seconds,
        "later_rounds_seconds": round_ends[-1] - round_ends[0],
        "teardown_seconds": finished - round_ends[-1],
        "accuracy": summary["final"]["accuracy"],
    }


def _case(dp: bool, rounds: int, data: str = "") -> dict[str, Any]:
    sim_r = simulation(dp=dp, rounds=rounds, sites=SITES, data=data)
    plain = plain_loop(dp=dp, rounds=rounds, sites=SITES, data=data)
    # Round 1 of the simulation also pays each Ray actor's first ClientApp import;
    # the later rounds are the steady-state cost.
    per_round_sim = sim_r["later_rounds_seconds"] / max(rounds - 1, 1)
    per_round_plain = plain["rounds_seconds"] / rounds
    return {
        "simulation": sim_r,
        "plain": plain,
        "ratio_all_rounds": sim_r["rounds_seconds"] / plain["rounds_seconds"],
        "ratio_steady_rounds": per_round_sim / per_round_plain,
    }


def _large_table(folder: Path, rows: int) -> str:
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=30, n_informative=10, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(30)])
    frame["target"] = y
    path = folder / "large.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def run(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else ROUNDS
    results: dict[str, Any] = {"sites": SITES, "rounds": rounds, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        large = _large_table(Path(tmp), 4_000 if quick else LARGE_ROWS)
        cases = {"dp": (True, ""), "no-dp": (False, ""), "dp-large": (True, large)}
        for name, (dp, data) in cases.items():
            case = _case(dp, rounds, data)
            results["cases"][name] = case
            print(
                f"B2 {name:8s} simulate/plain: all rounds "
                f"{case['ratio_all_rounds']:.2f}x, "
                f"rounds 2+ {case['ratio_steady_rounds']:.2f}x"
                f" (start-up {case['simulation']['startup_seconds']:.1f} s on its own)",
                flush=True,
            )
    results["large_rows"] = 4_000 if quick else LARGE_ROWS
    return results
