"""B11: what images and regression reach, side by side in one run.

- digits (scikit-learn's 1,797 8x8 images), 5 sites, IID, ``--model cnn`` with the
  cnn's defaults: test accuracy with ``--no-dp`` and at epsilon 3 (delta 1e-5);
- regression: the embedded breast-cancer data's ``mean area`` from the other
  columns (its diagnosis label among them), ``fedvault simulate --target 'mean
  area'`` (5 sites, the sites clip to the dataset's published ranges, DP at
  epsilon 3 and ``--no-dp``) against a central non-private linear model
  (scikit-learn's ``LinearRegression``) fitted on the same rows the sites hold
  and scored on the same held-out test split.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

SITES = 5
TARGET = "mean area"
# A linear model (logreg, zero start) against the central linear one; plain SGD
# on these correlated columns diverges above lr ~0.1. At epsilon 3 lr 0.1 measured
# best (R2 0.962; 0.05: 0.930, 0.2: 0.957; docs/models.md, "Measured").
REGRESSION_CASES: dict[str, dict[str, Any]] = {
    "no-dp": {"dp": False, "lr": 0.05},
    "dp-eps-3": {"epsilon": 3.0, "lr": 0.1},
    "dp-eps-3-20-rounds": {"epsilon": 3.0, "lr": 0.1, "rounds": 20},
}


def _simulate(out: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], float]:
    from fedvault.server import simulate as sim

    started = time.monotonic()
    summary = sim.run(sim.load_config(settings | {"timeout": 3600.0}), out)
    return summary, time.monotonic() - started


def _digits(tmp: Path, quick: bool) -> dict[str, Any]:
    base: dict[str, Any] = {"dataset": "digits", "model": "cnn", "sites": SITES}
    if quick:
        base["rounds"] = 3
    cases = {}
    for name, extra in (("no-dp", {"dp": False}), ("dp-eps-3", {"epsilon": 3.0})):
        summary, seconds = _simulate(tmp / name, base | extra)
        site = next(iter(summary["sites"].values()))
        cases[name] = {
            "accuracy": summary["final"]["accuracy"],
            "seconds": seconds,
            "epsilon_spent_max": max(
                (s["epsilon_spent"] or 0.0) for s in summary["sites"].values()
            ),
            "noise_multiplier": site["noise_multiplier"],
        }
    config = summary["config"]
    keys = ("rounds", "local-epochs", "batch-size", "lr", "momentum", "hidden")
    keys += ("max-grad-norm", "augment-copies", "augment-rotation", "augment-crop")
    return {"settings": {k: config[k] for k in keys}, "cases": cases}


def _central_r2(seed: int) -> float:
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    from fedvault.common.data import default_dataset
    from fedvault.common.partition import hold_out

    frame = default_dataset()
    test, rest = hold_out(frame, TARGET, 0.2, seed)
    features = [c for c in frame.columns if c != TARGET]
    model = LinearRegression().fit(rest[features], rest[TARGET])
    return float(r2_score(test[TARGET], model.predict(test[features])))


def _regression(tmp: Path, quick: bool) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": TARGET,
        "sites": SITES,
        "model": "logreg",
    }
    if quick:
        base["rounds"] = 3
    cases = {}
    for name, extra in REGRESSION_CASES.items():
        summary, seconds = _simulate(tmp / f"r-{name}", base | extra)
        cases[name] = {
            "r2": summary["final"]["r2"],
            "mae": summary["final"]["mae"],
            "seconds": seconds,
        }
    central = _central_r2(seed=int(summary["config"]["seed"]))
    return {"central_linear_r2": central, "cases": cases}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedvault-b10-") as tmp:
        return {
            "sites": SITES,
            "digits": _digits(Path(tmp), quick),
            "regression": _regression(Path(tmp), quick),
        }


def render(b: dict[str, Any]) -> list[str]:
    """B11's section of docs/benchmarks.md, with the issue's goals."""
    d, r = b["digits"], b["regression"]
    s = d["settings"]
    no_dp, dp = d["cases"]["no-dp"], d["cases"]["dp-eps-3"]
    central = r["central_linear_r2"]
    cases = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in case.items() if k != "dp")
        for name, case in REGRESSION_CASES.items()
    )
    lines = [
        "## B11 images and regression (goals: digits >= 0.95 without DP, >= 0.80 "
        "at epsilon 3; regression R2 within 0.05 of a central linear model)",
        "",
        f"`fedvault simulate`, {b['sites']} sites, IID. Digits: `--dataset digits "
        "--model cnn` with the cnn's defaults (rounds "
        f"{s['rounds']}, local epochs {s['local-epochs']}, batch {s['batch-size']}, "
        f"lr {s['lr']}, momentum {s['momentum']}, hidden {s['hidden']}, clipping "
        f"{s['max-grad-norm']}, augmentation copies {s['augment-copies']}, "
        f"rotation {s['augment-rotation']}, crop {s['augment-crop']}). Regression: "
        f"`--target '{TARGET}'` on the embedded breast-cancer table (its "
        "diagnosis label one of the inputs; task inferred; the sites clip the "
        "features and the target to the dataset's published ranges), "
        f"`--model logreg`, {cases} (plain SGD diverges at the default lr 0.5; "
        "at epsilon 3 lr 0.1 measured best, against 0.05 and 0.2), other "
        "settings default.",
        "",
        "| case | figure | value | seconds |",
        "|---|---|---:|---:|",
        f"| digits cnn, --no-dp | test accuracy | {no_dp['accuracy']:.4f} | "
        f"{no_dp['seconds']:.0f} |",
        f"| digits cnn, epsilon 3 (spent <= {dp['epsilon_spent_max']:.3f}, sigma "
        f"{dp['noise_multiplier']:.2f}) | test accuracy | {dp['accuracy']:.4f} | "
        f"{dp['seconds']:.0f} |",
    ]
    for name, case in r["cases"].items():
        lines.append(
            f"| mean area, {name} | test R2 (MAE) | {case['r2']:.4f} "
            f"({case['mae']:.1f}) | {case['seconds']:.0f} |"
        )
    lines.append(f"| mean area, central linear, no DP | test R2 | {central:.4f} | |")
    gap = central - max(c["r2"] for n, c in r["cases"].items() if n.startswith("dp"))
    # The regression goal names no epsilon: both are judged, side by side.
    plain = central - r["cases"]["no-dp"]["r2"]
    verdicts = [
        _goal("digits --no-dp >= 0.95", no_dp["accuracy"] >= 0.95),
        _goal("digits epsilon 3 >= 0.80", dp["accuracy"] >= 0.80),
        _goal(f"regression --no-dp within 0.05 (gap {plain:+.4f})", plain <= 0.05),
        _goal(f"regression at epsilon 3 within 0.05 (gap {gap:+.4f})", gap <= 0.05),
    ]
    return [*lines, "", "; ".join(verdicts) + ".", "", TRIED]


# What the digits tuning tried: docs/models.md, "Measured" (benchmarks.digits_sweep).
TRIED = (
    "What was tried for the cnn at epsilon 3 (settings, seeds, figures): "
    'docs/models.md, "Measured" (`python -m benchmarks.digits_sweep`). Kept: the '
    "cnn's shape on 8x8 images (one conv block of 16 channels and no dense hidden "
    "layer: 2,762 weights, from about 9,400 with two blocks and a dense layer), "
    "lr 0.2, 30 rounds, and an image site's summary (row and label counts only) "
    "planned for 20% of the run's epsilon instead of 50%, which leaves DP-SGD "
    "noise multiplier 4.38 instead of 5.00. Over seeds 0-2 the stand-in gives "
    "0.842 to 0.872 with this shape, 0.722 to 0.775 with the old one."
)


def _goal(text: str, met: bool) -> str:
    return f"**{text}: {'met' if met else 'missed'}**"
