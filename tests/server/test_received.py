"""The coordinator's record of every update it received (``received.jsonl``, then
the audit log's ``UpdateReceived`` entries) agrees with each site's access log:
the real fedvault ClientApp and the real round loop over an in-process grid."""

import json
from collections import defaultdict

import pytest
from flwr.app import Context, RecordDict
from local_grid import site_run_config
from typer.testing import CliRunner

from fedvault.client.access_log import access_log
from fedvault.client.app import app as client_app
from fedvault.client.ledger import anchor, check_anchor
from fedvault.client.ledger_cli import ledger_app
from fedvault.common.protocol import RUN_KEY
from fedvault.server.app import main
from fedvault.server.audit_log import AuditLog, verify
from fedvault.server.federation import Federation
from fedvault.server.received import (
    RECEIVED_FILE,
    RecordingGrid,
    audit_received,
    last_heads,
    read_heads,
    read_received,
)
from fedvault.server.settings import ServerSettings

NODES = [101, 202, 303]


@pytest.fixture
def federated(tmp_path, local_grid, make_contexts):
    run_config = site_run_config(tmp_path, NODES, rounds=2) | {RUN_KEY: "key-1"}
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    settings = ServerSettings.from_run_config(run_config)
    Federation(RecordingGrid(grid, settings.out_dir, "key-1"), settings).run()
    return tmp_path


def _sent_by_sites(root):
    sent = defaultdict(set)
    for pid in range(len(NODES)):
        for entry in access_log(root / f"state-{pid}").entries():
            if entry["reply"] == "trained":
                item = (entry["run-key"], entry["round"], entry["arrays"])
                sent[f"site-{pid + 1}"].add(item)
    return sent


def test_the_coordinators_record_matches_every_sites_access_log(federated):
    received = list(read_received(federated / "out"))
    assert len(received) == 2 * len(NODES)
    by_site = defaultdict(set)
    for entry in received:
        by_site[entry["site"]].add((entry["run-key"], entry["round"], entry["arrays"]))
    sent = _sent_by_sites(federated)
    assert by_site == sent
    assert {r for items in sent.values() for _, r, _ in items} == {1, 2}
    for pid in range(len(NODES)):
        access_log(federated / f"state-{pid}").verify()


def test_the_heads_recorded_are_each_sites_ledger_anchor_after_the_run(federated):
    last = last_heads(federated / "out")
    assert set(last) == {f"site-{pid + 1}" for pid in range(len(NODES))}
    for pid in range(len(NODES)):
        state = federated / f"state-{pid}"
        line = last[f"site-{pid + 1}"]
        now = anchor(state, "bc")
        assert line["run-key"] == "key-1"
        assert {k: v for k, v in line["head"].items() if k != "time"} == {
            k: v for k, v in now.items() if k != "time"
        }
        assert now["count"] > 0
        # the published head is an anchor the site checks its ledger against
        assert check_anchor(state, "bc", line["head"])
        # and its access log says which head each reply published
        published = [e["ledger-head"] for e in access_log(state).entries()]
        assert published[-1] == {"count": now["count"], "hash": now["hash"]}
    # every change of a head is a line: the stats reply's, then each round's
    counts = [e["head"]["count"] for e in read_heads(federated / "out")]
    assert len(counts) > len(NODES)


def test_received_updates_and_heads_enter_the_audit_log_and_chain(federated, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    count = audit_received(audit, federated / "out", run_id="9", who="coordinator")
    assert count == 3 * len(NODES)
    entries = list(audit.entries())
    updates = [e for e in entries if e["method"] == "UpdateReceived"]
    heads = [e for e in entries if e["method"] == "LedgerHead"]
    assert len(updates) == 2 * len(NODES) and len(heads) == len(NODES)
    assert entries[-len(NODES) :] == heads  # after the updates
    digests = {e["arrays"] for e in read_received(federated / "out")}
    assert {e["detail"].rsplit(" ", 1)[-1] for e in updates} == digests
    assert all("run 9 run-key key-1 round " in e["detail"] for e in updates)
    for site, line in last_heads(federated / "out").items():
        (entry,) = [e for e in heads if f" site {site} " in e["detail"]]
        head = line["head"]
        assert f"count {head['count']} hash {head['hash']} " in entry["detail"]
    assert verify(audit.path).seq == count - 1


def test_a_torn_last_line_is_skipped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    line = {"run-key": "k", "round": 1, "site": "a", "arrays": "sha256:00"}
    (out / RECEIVED_FILE).write_text(json.dumps(line) + "\n" + '{"run-key": "k", "ro')
    assert list(read_received(out)) == [line]


def test_a_secure_round_records_each_sites_masked_vector_on_both_sides(
    tmp_path, local_grid, make_contexts
):
    run_config = site_run_config(tmp_path, NODES, rounds=1, secagg=True)
    run_config |= {RUN_KEY: "key-2"}
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    settings = ServerSettings.from_run_config(run_config)
    Federation(RecordingGrid(grid, settings.out_dir, "key-2"), settings).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed"
    entries = list(access_log(tmp_path / "state-0").entries())
    assert [(e["message"], e["round"], e["reply"]) for e in entries] == [
        ("query.stats", None, "answered"),
        ("train secagg:setup", None, "answered"),
        ("train secagg:share_keys", None, "answered"),
        ("train secagg:collect_masked_vectors", 1, "trained"),
        ("train secagg:unmask", None, "answered"),
        ("evaluate", 1, "evaluated"),
    ]
    # the masked vectors travel in config records: both sides digest them alike
    received = list(read_received(tmp_path / "out"))
    assert {e["message"] for e in received} == {"train secagg:collect_masked_vectors"}
    by_site = defaultdict(set)
    for entry in received:
        by_site[entry["site"]].add((entry["run-key"], entry["round"], entry["arrays"]))
    assert len(received) == len(NODES)
    assert by_site == _sent_by_sites(tmp_path)
    assert all(e["arrays"].startswith("sha256:") for e in received)
    # the masking stage's reply is Flower's: the heads come with the others
    assert len(last_heads(tmp_path / "out")) == len(NODES)


def test_the_server_app_records_what_it_received(tmp_path, local_grid, make_contexts):
    run_config = site_run_config(tmp_path, NODES, rounds=1)  # no run key: run id
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    main(grid, Context(42, 0, {}, RecordDict(), dict(run_config)))
    received = list(read_received(tmp_path / "out"))
    assert [(e["run-key"], e["round"]) for e in received] == [("42", 1)] * 3
    assert {e["site"] for e in received} == {"site-1", "site-2", "site-3"}


def test_a_site_checks_its_ledger_against_the_head_it_published(federated):
    line = last_heads(federated / "out")["site-1"]
    published = federated / "head.json"
    published.write_text(json.dumps(line))
    state = str(federated / "state-0")
    args = ["verify", "--state", state, "--dataset", "bc", "--anchor", str(published)]
    result = CliRunner().invoke(ledger_app, args)
    assert result.exit_code == 0, result.output
    assert "matches" in result.output
    # the ledger of another site (same dataset id) is not the one that published it
    args[2] = str(federated / "state-1")
    result = CliRunner().invoke(ledger_app, args)
    assert result.exit_code == 2
    assert "differs from the anchor" in result.output
