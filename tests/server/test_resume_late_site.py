"""After a coordinator restart, a site of the run that reconnects too late for
the resumed run is named in every round: `not connected` while it is away, then
told (both sides) that it is not in this run since the restart and takes part in
the next; its record of the rounds it trained before stays in the summary. Real
fedvault ClientApps over the in-process grid, a real sites.json."""

import json

import pytest
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.client.site_status import read_answers
from fedvault.common.certs import generate_site_keys
from fedvault.common.protocol import NOTICE_MESSAGE
from fedvault.server.federation import Federation
from fedvault.server.registry import SiteRegistry
from fedvault.server.settings import ServerSettings
from fedvault.server.sites import NOT_CONNECTED, NOT_RESUMED

NODES = [101, 202, 303]
LATE = 303


def _registry(tmp_path):
    registry = SiteRegistry(tmp_path / "sites.json")
    for i, node in enumerate(NODES):
        _, public = generate_site_keys(tmp_path / "keys" / str(node))
        registry.add(f"site-{i + 1}", public)
        registry.set_node(f"site-{i + 1}", node)
    registry.save()
    return registry.path


def _settings(run_config, registry):
    settings = ServerSettings.from_run_config(run_config)
    return type(settings)(**(vars(settings) | {"registry": registry}))


def test_a_site_back_after_the_resume_is_told_and_keeps_its_record(
    tmp_path, local_grid, make_contexts
):
    config = site_run_config(tmp_path, NODES, rounds=3, min_sites=2)
    config |= {"expected-sites": 2, "round-timeout": 1.0}  # as deployed: min-sites
    contexts = make_contexts(NODES, config)
    for node, context in contexts.items():  # deployed sites: a state folder each
        context.node_config["state"] = str(tmp_path / f"node-{node}")
        (tmp_path / f"node-{node}").mkdir()
    registry = _registry(tmp_path)

    class Crashing(local_grid):  # the coordinator dies as round 2 starts
        def push_messages(self, messages):
            trains = sum(m.metadata.message_type == "train" for m in self.sent)
            if trains >= 3 and messages[0].metadata.message_type == "train":
                raise RuntimeError("the coordinator was killed")
            return super().push_messages(messages)

    with pytest.raises(RuntimeError):
        Federation(Crashing(client_app, contexts), _settings(config, registry)).run()

    # `server resume`: site-3 is back only after round 2 was sent, later than the
    # resumed run waits for it (round-timeout).
    resumed = config | {"resume": True}

    class Grid(local_grid):
        def get_node_ids(self):
            trains = sum(m.metadata.message_type == "train" for m in self.sent)
            return NODES if trains > 2 else NODES[:2]

    grid = Grid(client_app, contexts)
    Federation(grid, _settings(resumed, registry)).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())

    assert summary["status"] == "completed"
    states = summary["site_states"]
    assert states["1"]["site-3"] == "trained"  # before the restart
    assert states["2"]["site-3"] == NOT_CONNECTED
    assert states["3"]["site-3"] == NOT_RESUMED
    for rnd in ("2", "3"):
        assert states[rnd]["site-1"] == states[rnd]["site-2"] == "trained"
    assert summary["sites"]["site-3"]["rounds_trained"] == 1
    assert summary["sites"]["site-1"]["rounds_trained"] == 3
    # the site was told once, and its own record says why
    notices = [m for m in grid.sent if m.metadata.dst_node_id == LATE]
    assert [m.metadata.message_type for m in notices] == [NOTICE_MESSAGE]
    answers, _ = read_answers(tmp_path / f"node-{LATE}")
    assert (answers[-1]["answer"], answers[-1]["reason"]) == ("notice", NOT_RESUMED)
