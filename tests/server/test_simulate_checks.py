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


def _one_line_exit_2(code, err, out) -> str:
    """The refusal's one line, after checking exit 2 and that nothing was written."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err.strip()


def test_labels_written_two_ways_are_refused_naming_them(monkeypatch, capsys, tmp_path):
    labels = ["Yes", "No", "yes"] * 20
    data = _csv(tmp_path / "yn.csv", outcome=labels)
    out = tmp_path / "run"
    code, err = _simulate(
        monkeypatch, capsys, "--data", data, "--target", "outcome", "--out", str(out)
    )
    line = _one_line_exit_2(code, err, out)
    for needle in ("target column 'outcome'", "'Yes', 'yes'", "differ only in case"):
        assert needle in line, line


def test_a_weak_delta_is_warned_of(caplog, tmp_path):
    from fedvault.server import simulate as sim

    data = _csv(tmp_path / "d.csv", n=100)
    cfg = sim.load_config({"data": data, "target": "y", "sites": 2, "delta": 0.01})
    sim.prepare_data(cfg)  # 40 rows a site, 34 training rows: 1/(10 n) = 0.0029
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("delta: 0.01 is a weak delta for the largest site")
    assert "1/(10 n) = 0.00294" in warning
    caplog.clear()
    sim.prepare_data(sim.load_config({"data": data, "target": "y", "delta": 1e-4}))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_site_budget_on_sites_with_their_own_is_refused(monkeypatch, capsys, tmp_path):
    """--site-budget sets the budget of new sites only: on a --state whose site
    policies hold another one it used to be silently ignored."""
    from fedvault.server import simulate as sim

    state = tmp_path / "state"
    prepared = sim.prepare_data(sim.load_config({"sites": 2, "site-budget": 4.0}))
    sim.site_states(prepared, state)
    policy = state / "site-1" / "site.toml"
    before = policy.read_text()
    out = tmp_path / "run"
    args = ["--sites", "2", "--state", str(state), "--site-budget", "8"]
    code, err = _simulate(monkeypatch, capsys, *args, "--out", str(out))
    line = _one_line_exit_2(code, err, out)
    assert f"site-budget: site site-1's policy ({policy})" in line, line
    assert "epsilon-max = 4, not 8" in line, line
    assert policy.read_text() == before
    code, err = _simulate(
        monkeypatch, capsys, *args[:-1], "4", "--sites", "0", "--out", str(out)
    )
    assert "site-budget" not in err  # the same budget is no conflict


@pytest.mark.parametrize("existing", [False, True])
def test_noise_below_a_sites_minimum_is_refused_before_flower(
    monkeypatch, capsys, tmp_path, existing
):
    state = tmp_path / "state"
    args = ["--sites", "2", "--noise-multiplier", "0.6", "--state", str(state)]
    if existing:
        from fedvault.server import simulate as sim

        sim.site_states(sim.prepare_data(sim.load_config({"sites": 2})), state)
        policy = state / "site-1" / "site.toml"
        policy.write_text(policy.read_text().replace("= 0.3", "= 0.8"))
        where, floor = str(policy), "0.8"
    else:
        args[3] = "0.1"
        where, floor = "as simulate writes it", "0.3"
    out = tmp_path / "run"
    code, err = _simulate(monkeypatch, capsys, *args, "--out", str(out))
    line = _one_line_exit_2(code, err, out)
    assert f"noise-multiplier: site site-1's policy ({where})" in line, line
    assert f"below {floor}" in line and f"--noise-multiplier {floor} or more" in line


def test_the_same_seed_on_the_same_state_is_warned_of(monkeypatch, caplog, tmp_path):
    """A simulated site's noise derives from the seed: a second run with the same
    seed on the same state draws the same noise."""
    from fedvault.server import simulate as sim

    def flower(*_args):
        raise RuntimeError("not started in this test")

    monkeypatch.setattr(sim, "_simulate", flower)
    state = tmp_path / "state"
    for run, seed in (("a", 3), ("b", 4), ("c", 3)):
        caplog.clear()
        cfg = sim.load_config({"sites": 2, "seed": seed, "state": str(state)})
        with pytest.raises(RuntimeError, match="not started"):
            sim.run(cfg, tmp_path / run)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warned) is (run == "c")
    assert "already used --seed 3" in warned[0] and "same DP noise" in warned[0]


def test_proximal_mu_is_an_option(monkeypatch, capsys, tmp_path):
    """The README's study.toml sets proximal-mu, a key 'as the long options'."""
    out = tmp_path / "run"
    code, err = _simulate(monkeypatch, capsys, "--proximal-mu", "-1", "--out", str(out))
    assert "proximal-mu: must be >= 0" in _one_line_exit_2(code, err, out)


def test_no_evaluation_at_all_is_said_before_flower(caplog, tmp_path):
    """Vaults (no central test data) of fewer than 20 rows each: no site holds a
    validation split, so the model cannot be evaluated; said before the run."""
    from fedvault.server import simulate as sim

    def prepared(rows):
        sites = [(f"v{i}", tmp_path / f"v{i}") for i in range(len(rows))]
        config = sim.load_config({"sites": 2})
        return sim.PreparedData(sites, None, {}, config, rows=rows)

    sim.check_sizes(prepared((12, 19)))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "no site holds a validation split" in warning
    assert "will not be evaluated" in warning
    caplog.clear()
    sim.check_sizes(prepared((12, 20)))
    assert not caplog.records
