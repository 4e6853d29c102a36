"""Two runs at once on the same site state (one ledger per site): each round is
charged once, under the ledger's lock, and together the runs never spend more
than a site's lifetime budget; the ledgers verify afterwards."""

import json
import threading

import pytest
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.client.ledger import PrivacyLedger, verify_ledger
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [11, 22, 33]
BUDGET = 3.3  # one run (epsilon 3) fits; two (3.6 with the summary kept) do not


@pytest.mark.slow
def test_two_runs_on_one_state_share_one_budget(tmp_path, local_grid, make_contexts):
    run_config = site_run_config(tmp_path, NODES, rounds=4, epsilon=3.0)
    for pid in range(len(NODES)):
        policy = tmp_path / f"state-{pid}" / "site.toml"
        policy.write_text(
            policy.read_text().replace("epsilon-max = 10.0", f"epsilon-max = {BUDGET}")
        )
    errors: list[BaseException] = []

    def run(name: str) -> None:
        config = run_config | {"out-dir": str(tmp_path / name), "run-key": name}
        grid = local_grid(client_app, make_contexts(NODES, config))
        try:
            Federation(grid, ServerSettings.from_run_config(config)).run()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in "ab"]
    for pid in range(len(NODES)):
        state = tmp_path / f"state-{pid}"
        verify_ledger(state, "bc")
        ledger = PrivacyLedger.open(state, "bc", delta=1e-5, accountant="rdp")
        assert ledger.epsilon() <= BUDGET * (1 + 1e-9)
        trained = sum(
            s["sites"][f"site-{pid + 1}"]["rounds_trained"] for s in summaries
        )
        # DP-SGD rounds are Poisson-sampled (q < 1); the summary and validation
        # counts are whole-data Gaussian releases (q = 1) on the same ledger
        records = ledger.records()
        assert trained == len([r for r in records if r.sample_rate < 1])
        assert any(r.sample_rate == 1 for r in records)
    # the budget could not cover both runs in full: some rounds were declined
    declines = [
        d for s in summaries for site in s["sites"].values() for d in site["declines"]
    ]
    assert declines and all(d["reason"] == "budget" for d in declines)
