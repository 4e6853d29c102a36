"""What `fedvault simulate` finds before Flower starts, and what its tables say
(issue 12, case 14, and the findings of a new user's first runs)."""

import sys

import numpy as np
import pandas as pd
import pytest

from fedvault.common.cli import main


def _csv(path, n=60, seed=0, **columns):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.integers(0, 2, n)}
    )
    for name, values in columns.items():
        frame[name] = values
    path.write_text(frame.to_csv(index=False))
    return str(path)


def _simulate(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedvault", "simulate", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.err


def test_sites_too_small_to_train_are_found_before_flower(
    monkeypatch, capsys, tmp_path
):
    """--sites 10 on 60 rows (48 after the test split): no site could hold the 8
    training rows a site needs. It used to fail inside Flower (exit 1, a partial
    run folder)."""
    out = tmp_path / "run"
    data = _csv(tmp_path / "s60.csv")
    code, err = _simulate(
        monkeypatch, capsys, "--data", data, "--target", "y", "--sites", "10",
        "--out", str(out),
    )  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "error: sites: only 0 of the 10 sites would train (min-sites 2): a site "
        "needs 8 rows or more to train, and these hold 4 to 5; use fewer --sites "
        "or more data"
    )
    assert not out.exists()


def _summary(*, accuracy=None, val_accuracy=None):
    site = {
        "declines": [],
        "examples": 12,
        "rounds_trained": 3,
        "epsilon_spent": 2.9,
        "epsilon_lifetime": 2.9,
        "epsilon_budget": 3.0,
        "noise_multiplier": 1.234,
        "policy_note": None,
    }
    names = ["hospital-north-east", "hospital=St Mary's", "university-hospital-of-x"]
    history = [
        {"round": r, "accuracy": accuracy, "val_accuracy": val_accuracy,
         "sites_trained": 3, "seconds": 1.0}
        for r in (1, 2, 3)
    ]  # fmt: skip
    return {
        "dp": {"enabled": True, "delta": 1e-5, "accountant": "rdp"},
        "sites": dict.fromkeys(names, site),
        "excluded_sites": {"hospital-tiny-clinic": "only 5 training rows (< 8)"},
        "history": history,
        "status": "completed",
        "final": {"accuracy": accuracy, "val_accuracy": val_accuracy},
    }


def _printed(summary, tmp_path, width=80):
    from rich.console import Console

    from fedvault.server.simulate_tables import print_tables

    console = Console(record=True, width=width, color_system=None)
    print_tables(console, summary, tmp_path)
    return console.export_text()


def test_site_names_are_whole_in_an_80_column_terminal(tmp_path):
    text = _printed(_summary(accuracy=0.9), tmp_path)
    assert "…" not in text
    for name in ("hospital-north-east", "hospital=St Mary's", "hospital-tiny-clinic"):
        assert name in text
    assert "university-hospital-" in text and "of-x" in text
    assert "hospital-tiny-clinic: only 5 training rows (< 8)" in text
    assert all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.parametrize(
    ("figures", "title", "closing"),
    [
        ({"accuracy": 0.9}, "(held-out test split)", "Final test accuracy 0.9000"),
        (
            {"val_accuracy": 0.8},
            "(the sites' validation splits)",
            "validation splits 0.8000 (no central test data)",
        ),
        (
            {},
            "(not evaluated)",
            "The model was not evaluated: no central test data (--vaults) and no "
            "site holds a validation split (a site holds back 15% of its rows from "
            "20 rows on).",
        ),
    ],
)
def test_the_rounds_table_says_what_it_measured(tmp_path, figures, title, closing):
    text = " ".join(_printed(_summary(**figures), tmp_path, width=400).split())
    assert f"Global model per round {title}" in text
    assert closing in text
    if not figures:
        assert "held-out test split" not in text
