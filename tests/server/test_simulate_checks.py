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
