"""End-to-end simulations on Flower's simulation runtime (real SuperLink, Ray)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvault.common.data import default_dataset
from fedvault.server import simulate as sim

pytestmark = pytest.mark.slow

SMALL = {"sites": 3, "rounds": 2, "timeout": 600.0}


def _run(tmp_path: Path, name: str, **values):
    cfg = sim.load_config(SMALL | values)
    return sim.run(cfg, tmp_path / name)


def test_dp_federation_learns_within_budget(tmp_path):
    summary = _run(tmp_path, "a", seed=7)
    out = tmp_path / "a"
    assert summary["rounds_completed"] == 2 and summary["status"] == "completed"
    assert summary["final"]["accuracy"] > 0.8  # majority class is ~0.63
    assert summary["dp"] == {
        "enabled": True,
        "level": "sample-level, per site (DP-SGD)",
        "delta": 1e-5,  # the sites' own (all the same here)
        "accountant": "rdp",
        "requested_delta": 1e-5,  # what the run asked for
        "requested_accountant": "rdp",
        "epsilon_target": 3.0,
        "max_grad_norm": 1.0,
        "sampling": "poisson",
    }
    assert len(summary["sites"]) == 3
    for site in summary["sites"].values():
        assert 0 < site["epsilon_spent"] <= site["epsilon_budget"] == 3.0
        assert site["rounds_trained"] == 2 and site["noise_multiplier"] > 0
        assert (site["delta"], site["accountant"]) == (1e-5, "rdp")
        assert site["policy_note"] is None and site["noise_from_run_seed"] is True
    for name in ("summary.json", "metrics.csv", "model.pt", "preprocessing.json"):
        assert (out / name).is_file()
    bundle = torch.load(out / "model.pt", weights_only=False)
    assert bundle["rounds_completed"] == 2
    assert json.loads(bundle["preprocessing"])["target"] == "target"
    assert len((out / "metrics.csv").read_text().splitlines()) == 3

    again = _run(tmp_path, "b", seed=7)
    assert again["history"][-1]["accuracy"] == summary["history"][-1]["accuracy"]
    assert again["history"][-1]["loss"] == pytest.approx(
        summary["history"][-1]["loss"], rel=1e-6
    )
    assert again["sites"] == summary["sites"]


def test_no_dp_is_labelled_as_such(tmp_path):
    summary = _run(tmp_path, "n", dp=False, rounds=1)
    assert summary["dp"]["enabled"] is False
    assert all(s["epsilon_spent"] is None for s in summary["sites"].values())


def test_natural_partition_from_csv_with_a_tiny_site(tmp_path):
    frame = default_dataset()
    rng = np.random.default_rng(0)
    frame["hospital"] = rng.choice(["north", "south", "east"], size=len(frame))
    frame.loc[frame.index[:4], "hospital"] = "tiny"
    frame["ward"] = rng.choice(["icu", "er", None], size=len(frame))
    frame.loc[frame.index[::7], "mean radius"] = np.nan
    csv = tmp_path / "hospitals.csv"
    frame.rename(columns={"target": "diagnosis"}).to_csv(csv, index=False)
    out = tmp_path / "nat"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fedvault.common.cli import main; main()",
            "simulate",
            "--data",
            str(csv),
            "--target",
            "diagnosis",
            "--partition",
            "column:hospital",
            "--rounds",
            "2",
            "--out",
            str(out),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert sorted(summary["sites"]) == [
        "hospital=east",
        "hospital=north",
        "hospital=south",
    ]
    assert "hospital=tiny" in summary["excluded_sites"]
    assert "training rows" in summary["excluded_sites"]["hospital=tiny"]
    # No declared bounds: the noisy summary gives only a rough scale, and two
    # rounds rank well before the threshold settles (10 rounds: accuracy 0.85).
    assert summary["final"]["auc"] > 0.9
    prep = json.loads((out / "preprocessing.json").read_text())
    # Undeclared categories leave a site only past the noisy-count threshold.
    assert prep["categorical"] == ["ward"] and set(prep["vocab"][0]) <= {"er", "icu"}
    assert "hospital" not in prep["numeric"] + prep["categorical"]


def test_sites_decline_when_spent_and_a_second_run_continues(tmp_path):
    state = tmp_path / "state"
    # Fixed sigma: every round costs the same, so sites stop once the budget is spent.
    first = _run(
        tmp_path,
        "spend",
        rounds=50,
        epsilon=100.0,
        state=str(state),
        **{"noise-multiplier": 3.0, "site-budget": 2.0},
    )
    assert first["status"] == "stopped"
    assert "fewer than min-sites" in first["stop_reason"]
    for site in first["sites"].values():
        assert site["declines"][0]["reason"] == "budget"
        assert site["epsilon_lifetime"] <= 2.0
        assert 0 < site["rounds_trained"] < 50
    privacy = json.loads((tmp_path / "spend" / "privacy.json").read_text())
    assert privacy["sites"].keys() == first["sites"].keys()
    assert "NO DIFFERENTIAL" not in (tmp_path / "spend" / "privacy.txt").read_text()

    # Same state, more budget granted by the site's operator: continues from it.
    for policy in state.glob("*/site.toml"):
        policy.write_text(
            policy.read_text().replace("epsilon-max = 2.0", "epsilon-max = 4.0")
        )
    # The kept summary (planned for half of the first run's 2.0, charged once in
    # the lifetime) counts in every run's epsilon: this run's 2.0 covers it too.
    second = _run(tmp_path, "more", rounds=2, epsilon=2.0, state=str(state))
    for name, site in second["sites"].items():
        before = first["sites"][name]["epsilon_lifetime"]
        assert site["rounds_trained"] == 2
        assert site["epsilon_spent"] <= 2.0
        assert before < site["epsilon_lifetime"] <= 4.0


def test_int8_updates_train_as_well(tmp_path):
    summary = _run(tmp_path, "q", seed=7, compress="int8")
    assert summary["rounds_completed"] == 2
    assert summary["final"]["accuracy"] > 0.8
    assert summary["config"]["compress"] == "int8"


def test_a_run_no_site_can_afford_exits_non_zero_saying_why(tmp_path):
    """--epsilon 0.01: every site declines round 1 (budget). Exit 1, the reason and
    what to change on stderr, and no claim that a model was trained."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fedvault.common.cli import main; main()",
            "simulate",
            "--epsilon",
            "0.01",
            "--rounds",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    # Each site already declines its summary release (charged first): the run
    # cannot start, and says so under every site's name.
    assert "error: the run ended as" in proc.stderr
    assert "only 0 site(s) can train" in proc.stderr
    assert proc.stderr.count("declined (budget): the preprocessing summary") == 5
    assert "budget 0.01" in proc.stderr
    assert "Final test accuracy" not in proc.stdout
    assert not (out / "model.pt").exists()


def _processes_in_simulation_folders() -> list[str]:
    import os
    import tempfile

    root = os.path.join(tempfile.gettempdir(), "fedvault-sim-")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(root):
                found.append(f"{entry.name} {cwd}")
    return found


def test_sigterm_stops_everything_and_marks_the_run_interrupted(tmp_path):
    """A scheduler's SIGTERM mid-run: no Flower or Ray process is left, the
    private work folder (the sites' plaintext copies) is gone, and the run folder
    says it was interrupted rather than blaming the sites."""
    import signal
    import tempfile
    import time

    before = set(Path(tempfile.gettempdir()).glob("fedvault-sim-*"))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from fedvault.common.cli import main; main()",
            "simulate",
            "--no-dp",
            "--rounds",
            "300",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    progress = out / "progress.jsonl"
    while '"event": "round"' not in (progress.read_text() if progress.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert '"event": "interrupted"' in progress.read_text()
    assert set(Path(tempfile.gettempdir()).glob("fedvault-sim-*")) <= before
    time.sleep(2)
    assert _processes_in_simulation_folders() == []
