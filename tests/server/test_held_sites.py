"""A site that holds a run for its operator's approval ([approval] hold = true):
the coordinator asks it again every few seconds; approved meanwhile, it takes part;
never approved, it is excluded with the held reason once the coordinator's wait
for its sites ends. Real fedvault ClientApps over the in-process grid."""

import json
import time

from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.client.pending import decide, pending_runs
from fedvault.common.protocol import STATS_MESSAGE
from fedvault.server import held_sites
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [101, 202]


def _federation(tmp_path, local_grid, make_contexts, *, approve_at, wait):
    run_config = site_run_config(
        tmp_path, NODES, rounds=1, round_timeout=wait, min_sites=1
    )
    state = tmp_path / "state-1"  # site-2's state folder, its policy in it
    with (state / "site.toml").open("a") as handle:
        handle.write("\n[approval]\nhold = true\n")

    class Grid(local_grid):
        stats_to_held = 0

        def push_messages(self, messages):
            for m in messages:
                if m.metadata.message_type == STATS_MESSAGE and (
                    m.metadata.dst_node_id == NODES[1]
                ):
                    self.stats_to_held += 1
                    if self.stats_to_held == approve_at:  # the operator decides
                        decide(state, "1", approve=True)
            return super().push_messages(messages)

    grid = Grid(client_app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    return grid, summary, state


def test_a_held_site_is_asked_again_and_takes_part_once_approved(
    tmp_path, local_grid, make_contexts, monkeypatch
):
    monkeypatch.setattr(held_sites, "HELD_PAUSE", 0.5)
    grid, summary, state = _federation(
        tmp_path, local_grid, make_contexts, approve_at=3, wait=60.0
    )
    assert grid.stats_to_held == 3  # held twice, then it answered
    assert sorted(summary["sites"]) == ["site-1", "site-2"]
    assert summary["sites"]["site-2"]["rounds_trained"] == 1
    assert summary["excluded_sites"] == {}
    assert pending_runs(state) == []  # decided


def test_a_site_never_approved_is_excluded_with_the_held_reason(
    tmp_path, local_grid, make_contexts, monkeypatch
):
    monkeypatch.setattr(held_sites, "HELD_PAUSE", 0.5)
    started = time.monotonic()
    grid, summary, state = _federation(
        tmp_path, local_grid, make_contexts, approve_at=None, wait=6.0
    )
    # asked at once, then again every 0.5 s until round-timeout (6 s) had passed
    assert grid.stats_to_held >= 2
    assert time.monotonic() - started >= 6.0 - 0.5
    assert list(summary["sites"]) == ["site-1"]
    excluded = summary["excluded_sites"]["site-2"]
    assert excluded.startswith("declined (policy): held: waiting for the site ")
    assert "fedvault client approve 1" in excluded
    [held] = pending_runs(state)
    assert held.run_id == "1" and held.settings["rounds"] == 1
