"""Issue 17 end to end, in real processes on 127.0.0.1 with real TLS: the
coordinator service (`fedvault server serve`) keeps the SuperLink up; an admin
enrolls a researcher, an auditor and two sites over it; a researcher's study runs
to completion on both sites, on the feature columns it names; a second study, asking
for a column one site has not approved, completes on the other site only with the
decline in its results; a study naming a column outside the consortium's limits is
refused; a third study waits at a site that holds runs until its operator
approves it (`client pending`, `client approve`), then completes on both sites;
roles and ownership hold; a revoked user is refused on the next call; `audit
verify` passes and fails once one byte of the log is changed."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import tomli_w
from consortium import Consortium, prepare_two_sites, run_fedvault, wait_until
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from fedvault.client.access_log import access_log
from fedvault.client.approval import ca_fingerprint
from fedvault.client.pending import pending_runs
from fedvault.client.policy import load_policy
from fedvault.client.site_config import load_site_config
from fedvault.common.config import read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.processes import free_port
from fedvault.server.certs_cli import certs_app
from fedvault.server.governance_client import (
    RefusedError,
    UserCredentials,
    call,
    connect,
    pb,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes"),
]
SERVER = "fedvault.server.server_cli:server_app"
CLIENT = "fedvault.client.client_cli:client_app"
USERS = {"ada": "admin", "alice": "researcher", "bob": "researcher", "eve": "auditor"}
APPROVED = ["mean radius", "mean texture", "mean area"]  # by site-1 and the limits


def _study(*, features: list[str], min_sites: int) -> str:
    return tomli_w.dumps(
        {
            "coordinator": {
                "target": "target",
                "expected-sites": 2,
                "client-threads": 1,
                "timeout": 300.0,
            },
            "training": {
                "rounds": 1,
                "batch-size": 16,
                "min-sites": min_sites,
                "round-timeout": 150.0,
                "epsilon": 3.0,
                "features": features,
            },
        }
    )


def _prepare(root: Path) -> None:
    prepare_two_sites(root, rounds=1, min_sites=2)
    config = read_toml(root / "coordinator.toml")
    del config["sites"]  # the admin enrolls the sites over the service
    (root / "coordinator.toml").write_text(tomli_w.dumps(config))
    (root / "policy.toml").write_text(
        '[limits]\nmodels = ["mlp"]\ntargets = ["target"]\n'
        "max-epsilon = 3.0\nmax-rounds = 2\n"
        f"columns = {json.dumps([*APPROVED, 'worst area'])}\n"
    )
    fingerprint = ca_fingerprint(root / "certs" / "ca.crt")
    with (root / "site-1.toml").open("a") as handle:
        handle.write(
            f"\n[approval]\ncolumns = {json.dumps(APPROVED)}\n"
            f'models = ["mlp"]\ncoordinator-ca = "{fingerprint}"\n'
        )
    for name, role in USERS.items():
        args = ["user", name, "--role", role, "--ca", "certs", "--out", "users"]
        result = CliRunner().invoke(certs_app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output


def _as(root: Path, name: str) -> UserCredentials:
    return UserCredentials(
        root / "users" / f"{name}.crt",
        root / "users" / f"{name}.key",
        root / "certs" / "ca.crt",
    )


def _wait_done(stub, run_id: str, timeout: float = 300) -> pb.RunInfo:
    deadline = time.monotonic() + timeout
    while (info := call(lambda: stub.GetRun(pb.RunRef(run_id=run_id)))).status in (
        "running",
        "submitted",
    ):
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(2)
    return info


def _monitoring(monkeypatch, capsys, root, address, port, run) -> None:
    """Issue 17's monitoring of the service: `status --watch --run` as the run's
    researcher, and the Prometheus endpoint of `serve --metrics-address`."""
    user = ["--coordinator", address, "--ca", str(root / "certs" / "ca.crt")]
    user += ["--cert", str(root / "users" / "alice.crt")]
    user += ["--key", str(root / "users" / "alice.key")]
    watch = ["server", "status", "--watch", "--run", run.run_id, "--format", "json"]
    code, out = run_fedvault(monkeypatch, capsys, *watch, *user)
    assert code == 0 and '"status": "completed", "round": 1' in out, out
    assert '"site-1": {"state": "excluded: declined (policy)' in out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.read().decode())
            for s in family.samples
        }
    assert samples[("fedvault_runs", (("state", "completed"),))] == 3  # all 3 runs
    key = ("run", run.run_key)
    assert samples[("fedvault_rounds_completed_total", (key,))] == 1
    assert samples[("fedvault_epsilon_spent", (key, ("site", "site-0")))] > 0
    declined = (("reason", "policy"), key, ("site", "site-1"))
    assert samples[("fedvault_site_declines_total", declined)] == 1


def _digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def _heads_are_the_sites_anchors(root: Path, lines, monkeypatch, capsys) -> None:
    """The last ledger head the audit log holds of each site (read by the auditor)
    is what `fedvault client ledger anchor` prints at that site after the runs."""
    heads = {}
    for line in lines:
        entry = json.loads(line)
        if entry["method"] == "LedgerHead":
            words = entry["detail"].split()
            heads[words[5]] = (words[7], words[9], words[11])  # dataset, count, hash
    assert set(heads) == {"site-0", "site-1"}
    for name in ("site-0", "site-1"):
        state = load_site_config(root / f"{name}.toml").state_dir
        dataset = load_policy(root / f"{name}.toml").dataset_id
        code, out = run_fedvault(
            monkeypatch, capsys, "client", "ledger", "anchor",
            "--state", str(state), "--dataset", dataset,
        )  # fmt: skip
        assert code == 0, out
        anchor = json.loads(out)
        assert heads[name] == (dataset, str(anchor["count"]), anchor["hash"])
        assert anchor["count"] > 0


def test_a_governed_consortium(monkeypatch, capsys, tmp_path):
    root = tmp_path
    monkeypatch.chdir(root)
    _prepare(root)
    config = ["--config", str(root / "coordinator.toml")]
    code, out = run_fedvault(
        monkeypatch, capsys, "server", "users", "add", "users/ada.crt", *config
    )
    assert code == 0 and "ada enrolled as admin" in out
    procs = Consortium(root)
    service = root / "run" / "governance" / "service.json"
    try:
        metrics = free_port()
        serve = procs.launch(
            "coordinator", SERVER, "serve", *config,
            "--policy", "policy.toml", "--listen", "127.0.0.1:0",
            "--metrics-address", f"127.0.0.1:{metrics}",
        )  # fmt: skip
        wait_until("the service", service.exists, 90, serve)
        address = f"localhost:{json.loads(service.read_text())['port']}"

        with connect(address, _as(root, "ada")) as admin:
            for name in ("alice", "bob", "eve"):
                pem = (root / "users" / f"{name}.crt").read_text()
                call(
                    lambda pem=pem: admin.AddUser(
                        pb.AddUserRequest(certificate_pem=pem)
                    )
                )
            for name in ("site-0", "site-1"):
                key = (root / "keys" / name / "site.pub").read_text()
                request = pb.AddSiteRequest(name=name, public_key=key)
                assert call(lambda r=request: admin.AddSite(r)).node_id > 0
        for name in ("site-0", "site-1"):
            procs.launch(name, CLIENT, "start", "--config", f"{name}.toml")

        with connect(address, _as(root, "alice")) as alice:
            study = _study(features=APPROVED, min_sites=2)
            for bad, refusal in (
                (study.replace("rounds = 1", "rounds = 5"), "max-rounds 2"),
                (study.replace('"mean area"', '"worst radius"'), "'worst radius'"),
            ):
                with pytest.raises(ConfigError, match=refusal):
                    call(
                        lambda b=bad: alice.SubmitRun(pb.SubmitRunRequest(study_toml=b))
                    )
            first = call(lambda: alice.SubmitRun(pb.SubmitRunRequest(study_toml=study)))
            done = _wait_done(alice, first.run_id)
            assert done.status == "completed", procs.output("coordinator")[-3000:]
            summary = json.loads(done.summary_json)
            assert summary["status"] == "completed"
            assert sorted(summary["sites"]) == ["site-0", "site-1"]
            events = list(alice.WatchRun(pb.RunRef(run_id=first.run_id), timeout=60))
            assert any(json.loads(e.event_json)["event"] == "round" for e in events)
            # both sites summarized (and trained on) the named columns only
            prep = root / "run" / "governance" / "runs" / first.run_key / "output"
            prep_doc = json.loads((prep / "preprocessing.json").read_text())
            assert sorted(prep_doc["numeric"]) == sorted(APPROVED)

            asks = [*APPROVED, "worst area"]  # a column site-1 has not approved
            second = call(lambda: alice.SubmitRun(
                pb.SubmitRunRequest(study_toml=_study(features=asks, min_sites=1))
            ))  # fmt: skip
            done = _wait_done(alice, second.run_id)
            assert done.status == "completed", procs.output("coordinator")[-3000:]
            summary = json.loads(done.summary_json)
            assert list(summary["sites"]) == ["site-0"]
            assert summary["sites"]["site-0"]["rounds_trained"] == 1
            declined = summary["excluded_sites"]["site-1"]
            assert "declined (policy)" in declined and "'worst area'" in declined

            # site-0's operator holds every run until approving it
            site0 = root / "site-0.toml"
            with site0.open("a") as handle:
                handle.write("\n[approval]\nhold = true\n")
            third = call(lambda: alice.SubmitRun(pb.SubmitRunRequest(study_toml=study)))
            held_at = load_site_config(site0).state_dir
            wait_until("site-0 to hold the run", lambda: pending_runs(held_at), 120)
            code, out = run_fedvault(
                monkeypatch, capsys, "client", "pending", "--config", str(site0)
            )
            assert code == 0 and f"run {third.run_id} (run key {third.run_key})" in out
            code, out = run_fedvault(
                monkeypatch, capsys, "client", "approve", third.run_id,
                "--config", str(site0),
            )  # fmt: skip
            assert code == 0 and f"run {third.run_id} approved" in out, out
            done = _wait_done(alice, third.run_id)
            assert done.status == "completed", procs.output("coordinator")[-3000:]
            summary = json.loads(done.summary_json)
            assert sorted(summary["sites"]) == ["site-0", "site-1"]
            assert summary["sites"]["site-0"]["rounds_trained"] == 1
            with pytest.raises(RefusedError, match="may not call AddSite"):
                call(lambda: alice.AddSite(pb.AddSiteRequest(name="x", public_key="")))
        _monitoring(monkeypatch, capsys, root, address, metrics, second)

        with connect(address, _as(root, "bob")) as bob:
            with pytest.raises(RefusedError, match="not yours"):
                call(lambda: bob.GetRun(pb.RunRef(run_id=first.run_id)))
            assert call(lambda: bob.ListRuns(pb.ListRunsRequest())).runs == []

        state = [
            root / "run" / "sites.json",
            root / "run" / "governance" / "users.json",
        ]
        before = _digest(*state)
        with connect(address, _as(root, "eve")) as auditor:
            runs = call(lambda: auditor.ListRuns(pb.ListRunsRequest())).runs
            assert {r.run_id for r in runs} == {
                first.run_id,
                second.run_id,
                third.run_id,
            }
            assert all(r.summary_json for r in runs)
            # the privacy report of every run, with its summary
            reports = [json.loads(r.summary_json)["privacy_report"] for r in runs]
            assert all(report["sites"] for report in reports)
            lines = call(lambda: auditor.ReadAudit(pb.ReadAuditRequest())).lines
            ok = [json.loads(x)["method"] for x in lines if '"outcome": "ok"' in x]
            assert ok.count("AddSite") == 2 and ok.count("SubmitRun") == 3
            _heads_are_the_sites_anchors(root, lines, monkeypatch, capsys)
            for attempt in (
                lambda: auditor.StopRun(pb.RunRef(run_id=first.run_id)),
                lambda: auditor.RemoveSite(pb.RemoveSiteRequest(name="site-0")),
                lambda: auditor.RevokeUser(pb.RevokeUserRequest(name="bob")),
            ):
                with pytest.raises(RefusedError):
                    call(attempt)
        assert _digest(*state) == before

        with connect(address, _as(root, "ada")) as admin:
            call(lambda: admin.RemoveSite(pb.RemoveSiteRequest(name="site-1")))
            left = call(lambda: admin.ListSites(pb.ListSitesRequest())).sites
            assert [s.name for s in left] == ["site-0"]
            call(lambda: admin.RevokeUser(pb.RevokeUserRequest(name="bob")))
        with (
            connect(address, _as(root, "bob")) as bob,
            pytest.raises(RefusedError, match="revoked"),
        ):
            call(lambda: bob.ListSites(pb.ListSitesRequest()))
    finally:
        survivors = procs.stop_all()
    assert not survivors

    log = root / "run" / "governance" / "audit.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    submitted = [
        e for e in entries if e["method"] == "SubmitRun" and e["outcome"] == "ok"
    ]
    assert [e["who"] for e in submitted] == ["alice", "alice", "alice"]
    removed = [e for e in entries if e["method"] == "RemoveSite"]
    assert [(e["who"], e["outcome"]) for e in removed][-1] == ("ada", "ok")
    assert "site site-1 SHA256:" in removed[-1]["detail"]
    assert all("run-key" in e["detail"] for e in submitted)
    ended = [e["detail"] for e in entries if e["method"] == "RunEnded"]
    assert ended == [
        f"run {first.run_id} run-key {first.run_key} completed; sites site-0, site-1",
        f"run {second.run_id} run-key {second.run_key} completed; sites site-0; "
        "excluded site-1 (declined (policy): the run trains on column 'worst area'; "
        "the site approves only mean radius, mean texture, mean area ([approval] "
        "columns))",
        f"run {third.run_id} run-key {third.run_key} completed; sites site-0, site-1",
    ]
    # every update the coordinator audited is one a site's access log says it sent
    audited = {
        tuple(e["detail"].split()[i] for i in (3, 5, 7, 9))  # key, round, site, arrays
        for e in entries
        if e["method"] == "UpdateReceived"
    }
    sent = set()
    for name in ("site-0", "site-1"):
        log_of_site = access_log(load_site_config(root / f"{name}.toml").state_dir)
        log_of_site.verify()
        sent |= {
            (e["run-key"], str(e["round"]), name, e["arrays"])
            for e in log_of_site.entries()
            if e["reply"] == "trained"
        }
    assert len(audited) == 5 and audited == sent
    code, out = run_fedvault(monkeypatch, capsys, "server", "audit", "verify", *config)
    assert code == 0 and "chain intact" in out, out
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))
    code, out = run_fedvault(monkeypatch, capsys, "server", "audit", "verify", *config)
    assert code != 0 and "audit log line" in out, out
