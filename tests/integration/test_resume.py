"""The coordinator dies after round 1; `fedvault server resume` finishes the run.

Real processes on 127.0.0.1 with TLS and site authentication: a coordinator and two
sites. Once round 1 is checkpointed the coordinator (CLI and SuperLink) is killed
with SIGKILL, as in a crash; the sites keep retrying. `server resume` restarts the
SuperLink on the same state database and continues from round 2 with the same run
key, so each site's ledger continues the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest
from consortium import Consortium, events, flower_pids, prepare_two_sites, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 3


class Processes(Consortium):
    def crash_coordinator(self) -> None:
        """SIGKILL the coordinator's CLI and its SuperLink (not the sites)."""
        os.killpg(self.procs["coordinator"].pid, signal.SIGKILL)
        self.procs["coordinator"].wait(timeout=10)
        run_home = self.root / "run"
        for pid in flower_pids(run_home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_resume_after_the_coordinator_dies(tmp_path):
    prepare_two_sites(tmp_path, rounds=ROUNDS, min_sites=2)
    procs = Processes(tmp_path)
    config = ["--config", str(tmp_path / "coordinator.toml")]
    server = "fedvault.server.server_cli:server_app"
    try:
        coordinator = procs.launch("coordinator", server, "start", *config)
        live = tmp_path / "run" / "coordinator.json"  # sites registered, run submitted
        wait_until(
            "the coordinator",
            lambda: live.exists() and "run-id" in live.read_text(),
            90,
            coordinator,
        )
        for i in range(2):
            procs.launch(
                f"site-{i}",
                "fedvault.client.client_cli:client_app",
                "start",
                "--config",
                str(tmp_path / f"site-{i}.toml"),
            )
        rounds = lambda: [e for e in events(tmp_path) if e["event"] == "round"]  # noqa: E731
        wait_until("round 1", lambda: len(rounds()) >= 1, 240, coordinator)
        procs.crash_coordinator()
        assert not (tmp_path / "run" / "output" / "summary.json").exists()
        done_before = len(rounds())

        resumed = procs.launch("resume", server, "resume", *config)
        assert resumed.wait(timeout=420) == 0, (tmp_path / "resume.out").read_text()
    finally:
        survivors = procs.stop_all()
    assert not survivors

    summary = json.loads((tmp_path / "run" / "output" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == ROUNDS
    assert [row["round"] for row in summary["history"]] == list(range(1, ROUNDS + 1))
    assert any(e["event"] == "resumed" for e in events(tmp_path))
    assert done_before < ROUNDS
    run_keys = set()
    for i in range(2):
        ledger = tmp_path / "state" / f"site-{i}" / "ledger" / "bc.jsonl"
        records = [json.loads(line) for line in ledger.read_text().splitlines()]
        # DP-SGD rounds are Poisson-sampled (q < 1); the kept summary and the
        # validation counts are whole-data releases (q = 1) on the same ledger
        steps = [r for r in records if r["sample_rate"] < 1]
        run_keys |= {r["run_id"] for r in steps}
        trained = sorted(r["round"] for r in steps)
        assert trained == list(range(1, ROUNDS + 1))  # every round it trained, once
        # the summary was released once for the dataset version, not again on resume
        assert sum(r["run_id"].startswith("summary:") for r in records) == 1
        assert summary["sites"][f"site-{i}"]["epsilon_lifetime"] == pytest.approx(
            records[-1]["epsilon"]
        )
    assert len(run_keys) == 1  # one run in the sites' ledgers, across the restart
