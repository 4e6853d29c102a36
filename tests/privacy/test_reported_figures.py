"""Every privacy figure a run prints is the site's own, at the site's own delta with
its own accountant, carried in its reply (issue 11, case 2). The real round loop and
real ClientApps over the in-process grid; real DP-SGD at the sites."""

import json

import pytest
from local_grid import site_run_config
from rich.console import Console

from fedvault.client.app import app as client_app
from fedvault.client.ledger import verify_ledger
from fedvault.common.config import TrainingConfig
from fedvault.common.privacy import epsilon_spent
from fedvault.server import simulate_cli
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

pytestmark = pytest.mark.privacy

NODES = [101, 202, 303]


def _federate(run_config, local_grid, make_contexts, out):
    run_config = run_config | {"out-dir": str(out)}
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    return (
        json.loads((out / "summary.json").read_text()),
        json.loads((out / "privacy.json").read_text()),
        (out / "privacy.txt").read_text(),
    )


def _printed(summary, out, monkeypatch):
    console = Console(record=True, width=240, color_system=None)
    monkeypatch.setattr(simulate_cli, "console", console)
    simulate_cli._print_tables(summary, out)
    return console.export_text()


def test_a_second_run_asking_for_another_delta_prints_the_sites_own(
    tmp_path, local_grid, make_contexts, monkeypatch
):
    # Each site's policy (its existing state): delta 1e-5, RDP accountant.
    base = site_run_config(tmp_path, NODES, rounds=1)
    _federate(base | {"run-key": "first"}, local_grid, make_contexts, tmp_path / "a")
    asked = TrainingConfig(rounds=1, seed=3, delta=1e-6, accountant="prv")
    second = base | asked.to_run_config() | {"run-key": "second"}
    out = tmp_path / "b"
    summary, privacy, text = _federate(second, local_grid, make_contexts, out)

    assert summary["status"] == "completed"
    dp = summary["dp"]
    assert (dp["delta"], dp["accountant"]) == (1e-5, "rdp")
    assert (dp["requested_delta"], dp["requested_accountant"]) == (1e-6, "prv")
    for pid, (name, site) in enumerate(sorted(summary["sites"].items())):
        records = verify_ledger(tmp_path / f"state-{pid}", "bc")
        # The run's releases: its summary (made in the first run, reused), its
        # DP-SGD round and its validation counts; the lifetime holds both runs'.
        mine = ("second", "second:eval")
        run = [r.step for r in records if r.run_id in mine or "summary:" in r.run_id]
        lifetime = [r.step for r in records]
        assert len(run) == 3 and len(lifetime) == 5
        assert (site["delta"], site["accountant"]) == (1e-5, "rdp")
        assert site["epsilon_spent"] == pytest.approx(
            epsilon_spent(run, delta=1e-5, accountant="rdp"), rel=1e-9
        )
        assert site["epsilon_lifetime"] == pytest.approx(
            epsilon_spent(lifetime, delta=1e-5, accountant="rdp"), rel=1e-9
        )
        assert "delta 1e-05 and rdp accountant" in site["policy_note"]
        assert "asked for delta 1e-06 with prv" in site["policy_note"]
        assert privacy["sites"][name]["delta"] == 1e-5
        assert privacy["sites"][name]["accountant"] == "rdp"
        assert f"{name}: " in text and "(delta 1e-05, rdp accountant;" in text
    assert (privacy["delta"], privacy["accountant"]) == (1e-5, "rdp")
    assert privacy["requested_delta"] == 1e-6
    assert "1e-06, prv accountant" not in text
    assert "the run asked for delta 1e-06 with prv" in text

    printed = _printed(summary, out, monkeypatch)
    assert "delta=1e-06" not in printed and "prv accountant" not in printed
    assert "delta=1e-05, rdp accountant (the sites' own)" in printed
    assert (
        "site-1, site-2, site-3: accounted with its own policy's delta 1e-05 and rdp "
        "accountant; the run asked for delta 1e-06 with prv."
    ) in printed


def test_privacy_txt_says_what_is_released_and_whose_noise_it_is(
    tmp_path, local_grid, make_contexts
):
    run_config = site_run_config(tmp_path, NODES, rounds=1) | {"run-key": "r"}
    summary, privacy, text = _federate(
        run_config, local_grid, make_contexts, tmp_path / "out"
    )
    for name, site in privacy["sites"].items():
        assert site["noise_from_run_seed"] is True  # simulated sites
        assert site["examples"] == summary["sites"][name]["examples"] > 0
        assert 0 < site["sample_rate"] < 1 and site["noise_multiplier"] > 0
        assert site["policy_note"] is None  # the run asked for the sites' own
    # every kind of release, its mechanism and share; what epsilon does not cover
    kinds = [r["release"] for r in privacy["releases"]]
    assert any("model updates" in k for k in kinds)
    assert any("preprocessing summary" in k for k in kinds)
    assert any("validation counts" in k for k in kinds)
    assert all(r["mechanism"] and r["share"] for r in privacy["releases"])
    assert "participation" in privacy["not_covered"]
    assert "Not covered by epsilon:" in text and "row count n to within" in text
    assert "No training or validation loss is released" in text
    assert "whatever that site released" not in text
    assert "noise derives from the run's seed (3, stored in summary.json)" in text
    assert "A deployed site draws its noise seed from its operating system" in text
