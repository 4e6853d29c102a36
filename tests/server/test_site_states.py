"""Every site the coordinator knows gets one state per training round: trained,
declined (why), failed (why), rejected (why), not sampled, not connected,
excluded, or not in this run (connected after it started: told so, it joins the
next run). Real fedvault ClientApps over the in-process grid; the registry is a
real sites.json; each site's own record is its answers.jsonl."""

import json

from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.client.site_status import read_answers, site_status
from fedvault.common.certs import generate_site_keys
from fedvault.server.federation import Federation
from fedvault.server.registry import SiteRegistry
from fedvault.server.settings import ServerSettings
from fedvault.server.sites import NEXT_RUN, NOT_CONNECTED, NOT_SAMPLED, SiteBook

NODES = [101, 202, 303, 404]
LATE, AWAY = 505, 606


def _registry(tmp_path, names: dict[str, int]):
    registry = SiteRegistry(tmp_path / "sites.json")
    for name, node in names.items():
        _, public = generate_site_keys(tmp_path / "keys" / name)
        registry.add(name, public)
        registry.set_node(name, node)
    registry.save()
    return registry.path


def test_every_known_site_has_a_state_each_round(tmp_path, local_grid, make_contexts):
    run_config = site_run_config(
        tmp_path, NODES, rounds=2, budget={2: 0.3}, require_secagg=(3,)
    )
    contexts = make_contexts([*NODES, LATE], run_config)
    for node, context in contexts.items():  # deployed sites: a state folder each
        context.node_config["state"] = str(tmp_path / f"node-{node}")
        (tmp_path / f"node-{node}").mkdir()
    names = {f"site-{i + 1}": node for i, node in enumerate(NODES)}
    registry = _registry(tmp_path, names | {"late": LATE, "away": AWAY})

    class Grid(local_grid):
        calls = 0

        def get_node_ids(self):  # the late site connects after the run started
            self.calls += 1
            return NODES if self.calls == 1 else [*NODES, LATE]

    grid = Grid(client_app, contexts)
    settings = ServerSettings.from_run_config(run_config)
    settings = type(settings)(**(vars(settings) | {"registry": registry}))
    Federation(grid, settings).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())

    states = summary["site_states"]
    assert list(states) == ["1", "2"]
    for rnd in ("1", "2"):
        assert states[rnd]["site-1"] == states[rnd]["site-2"] == "trained"
        assert states[rnd]["site-3"].startswith("declined: budget (")
        assert states[rnd]["site-4"].startswith("excluded: declined (policy)")
        assert states[rnd]["late"] == NEXT_RUN
        assert states[rnd]["away"] == NOT_CONNECTED
    assert summary["history"][0]["site_states"] == states["1"]
    # The late site was told once, and its own record says so.
    notices = [m for m in grid.sent if m.metadata.dst_node_id == LATE]
    assert len(notices) == 1
    late, _ = read_answers(tmp_path / f"node-{LATE}")
    assert [(a["answer"], a["reason"]) for a in late] == [("notice", NEXT_RUN)]
    # Each site's own record: what it answered, round by round.
    trained, _ = read_answers(tmp_path / "node-101")
    assert [(a["message"], a["answer"]) for a in trained] == [
        ("stats", "summary sent"),
        ("train", "trained"),
        ("evaluate", "evaluated"),
        ("train", "trained"),
        ("evaluate", "evaluated"),
    ]
    assert trained[3]["round"] == 2 and trained[3]["epsilon"] > trained[1]["epsilon"]
    status = site_status(tmp_path / "node-303", running_pid=None)
    assert status["round"] == 2 and len(status["declines"]) == 2
    assert "round 1 train: declined (budget: " in status["declines"][0]
    assert status["epsilon"] is None  # it never trained
    ok = site_status(tmp_path / "node-101", running_pid=None)
    assert ok["epsilon"] == trained[3]["epsilon"] and ok["declines"] == []


def test_a_connected_site_left_out_of_a_round_is_not_sampled(tmp_path):
    from fedvault.common.config import TrainingConfig

    book = SiteBook(TrainingConfig(), {})
    book.site(1).name, book.site(2).name, book.site(3).name = "a", "b", "c"
    book.present = {1, 2, 3}

    class Sent:
        def __init__(self, node):
            self.metadata = type("M", (), {"dst_node_id": node})

    book.sampled([Sent(1), Sent(2)])
    book._answers[1] = "trained"
    states = book.round_states(connected=[1, 3], registered={})
    assert states == {
        "a": "trained",
        "b": "failed: no reply within round-timeout",
        "c": NOT_SAMPLED,
    }


def test_a_site_on_another_fedvault_minor_version_declines(
    tmp_path, local_grid, make_contexts
):
    from fedvault.client.answer_log import version_mismatch

    assert version_mismatch("1.4.2", "1.4.0") is None
    assert version_mismatch("", "1.4.0") is None  # an older coordinator: not checked
    run_config = site_run_config(tmp_path, NODES[:3], rounds=1, min_sites=2)
    contexts = make_contexts(NODES[:3], run_config)
    contexts[303].run_config["fedvault-version"] = "0.0.1"  # as if the coordinator's
    grid = local_grid(client_app, contexts)
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reason = summary["excluded_sites"]["site-3"]
    assert reason.startswith("declined (policy): the coordinator runs fedvault 0.0.1")
    assert "major.minor must match" in reason
    assert summary["site_states"]["1"]["site-3"] == f"excluded: {reason}"
