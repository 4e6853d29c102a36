"""Monitoring (issue 17): `server status --watch` and the Prometheus metrics, on a
real run (the round loop with the real ClientApp at 3 sites, one of which declines
it by its policy), followed from its run folder while a coordinator holds it, and
from the coordinator service's WatchRun stream over real mutual TLS; the metrics
scraped over HTTP on loopback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from trained_run import fedvault, make_run

from fedvault.common import certs
from fedvault.common.processes import free_port
from fedvault.common.user_certs import issue_user_cert, read_user_cert
from fedvault.server.control_service import Governance, start_service
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.metrics import MetricsServer, book_runs, folder_runs
from fedvault.server.run_book import RunBook
from fedvault.server.runstate import read_events
from fedvault.server.sites import (
    NEXT_RUN,
    NO_REPLY,
    NOT_CONNECTED,
    NOT_SAMPLED,
    TRAINED,
)
from fedvault.server.status_cli import follow_folder
from fedvault.server.users import UserRegistry
from fedvault.server.watch import RunView, fold, state_kind

HOLD = (
    "import sys, time; from pathlib import Path; "
    "from fedvault.common.files import PidLock; "
    "PidLock(Path(sys.argv[1]), what='t').acquire(); print('held', flush=True); "
    "time.sleep(120)"
)
DECLINE = "declined (policy): the site requires secure aggregation"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A completed 2-round run: site-1 and site-2 train, site-3 declines (its
    policy requires SecAgg+), and its summary."""
    out = make_run(tmp_path_factory.mktemp("monitoring"), rounds=2, require_secagg=(2,))
    return out, json.loads((out / "summary.json").read_text())


def _coordinator(tmp_path: Path) -> tuple[Path, CoordinatorLayout]:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        '[coordinator]\nrun-dir = "run"\n[training]\nrounds = 2\n'
        '[sites]\n"site-1" = "k/site-1.pub"\n'
    )
    layout = CoordinatorLayout(tmp_path / "run")
    layout.state.mkdir(parents=True)
    layout.run_config_file.write_text('run-key = "key-1"\n')
    return config, layout


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_view_of_a_real_run(real_run):
    out, summary = real_run
    view = fold(read_events(out / "progress.jsonl"), run="r")
    assert (view.status, view.round, view.rounds) == ("completed", 2, 2)
    assert view.ended
    for name in ("site-1", "site-2"):
        site = view.sites[name]
        assert site.state == "trained" and site.rounds_trained == 2
        assert site.epsilon == summary["sites"][name]["epsilon_spent"] > 0
    declined = view.sites["site-3"]
    assert declined.state.startswith(f"excluded: {DECLINE}")
    assert dict(declined.declines) == {"policy": 1}  # repeated each round, once
    assert declined.epsilon is None and not declined.failures


def test_watch_and_metrics_follow_a_run_folder_live(real_run, tmp_path):
    out, summary = real_run
    config, layout = _coordinator(tmp_path)
    layout.output.mkdir()
    lines = (out / "progress.jsonl").read_text().splitlines(keepends=True)
    holder = subprocess.Popen(  # a coordinator holding the folder
        [sys.executable, "-c", HOLD, str(layout.lock)], stdout=subprocess.PIPE
    )
    port = free_port()
    metrics = MetricsServer(f"127.0.0.1:{port}", folder_runs(layout))
    views: list[RunView] = []
    watcher = threading.Thread(target=lambda: follow_folder(config, views.append))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        watcher.start()
        progress = layout.output / "progress.jsonl"
        for line in lines[:3]:  # start, ready, round 1
            with progress.open("a") as handle:
                handle.write(line)
        _until(lambda: views and views[-1].round == 1, "round 1 not shown")
        assert views[-1].status == "running" and not views[-1].ended
        during = _scrape(port)
        assert during[("fedvault_runs", (("state", "running"),))] == 1
        run = ("run", "key-1")
        assert during[("fedvault_rounds_completed_total", (run,))] == 1
        with progress.open("a") as handle:
            handle.writelines(lines[3:])
        shutil.copy(out / "summary.json", layout.output / "summary.json")
        watcher.join(30)
        assert not watcher.is_alive(), "the watch did not end with the run"
        after = _scrape(port)
    finally:
        holder.kill()
        holder.communicate()
        metrics.close()
    assert [v.round for v in views][-1] == 2 and views[-1].ended
    assert views[-1].status == "completed"
    assert after[("fedvault_runs", (("state", "completed"),))] == 1
    assert after[("fedvault_rounds_completed_total", (run,))] == 2
    assert after[("fedvault_rounds_planned", (run,))] == 2
    for name in ("site-1", "site-2"):
        labels = (run, ("site", name))
        spent = summary["sites"][name]["epsilon_spent"]
        assert after[("fedvault_epsilon_spent", labels)] == pytest.approx(spent)
    assert after[("fedvault_sites", (run, ("state", "trained")))] == 2
    assert after[("fedvault_sites", (run, ("state", "excluded")))] == 1
    declines = (("reason", "policy"), run, ("site", "site-3"))
    assert after[("fedvault_site_declines_total", declines)] == 1


def test_status_watch_prints_json_lines_and_refuses_bad_use(
    real_run, tmp_path, monkeypatch, capsys
):
    out, _ = real_run
    config, layout = _coordinator(tmp_path)
    shutil.copytree(out, layout.output)
    code, stdout, err = fedvault(
        monkeypatch, capsys, "server", "status", "--watch", "--config", config,
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    last = json.loads(stdout.splitlines()[-1])
    assert (last["status"], last["round"], last["ended"]) == ("completed", 2, True)
    assert last["sites"]["site-3"]["declines"] == {"policy": 1}
    code, _, err = fedvault(
        monkeypatch, capsys, "server", "status", "--run", "1", "--config", config
    )
    assert code == 2 and "--run: only with --watch" in err
    code, _, err = fedvault(
        monkeypatch, capsys, "server", "start", "--config", config,
        "--metrics-address", "0.0.0.0:9464",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--metrics-address: '0.0.0.0' must be a loopback address" in err


def test_ctrl_c_stops_watching_cleanly(tmp_path):
    config, _ = _coordinator(tmp_path)  # no run yet: the watch waits for one
    watch = subprocess.Popen(
        [sys.executable, "-c", "from fedvault.common.cli import main; main()",
         "server", "status", "--watch", "--config", str(config), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["status"] == "waiting for the coordinator" and not first["ended"]
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0 and b"Traceback" not in err, err


@pytest.fixture
def service(tmp_path, real_run):
    """The coordinator service (no SuperLink) holding the real run as run 7 of
    alice's; bob is another researcher."""
    ca = tmp_path / "certs"
    certs.create_ca(ca)
    certs.issue_server_cert(ca, host="localhost")
    ca_pem = (ca / "ca.crt").read_bytes()
    layout = CoordinatorLayout(tmp_path / "run")
    gov = Governance(
        layout.root / "governance", layout, ca_pem, tmp_path / "p.toml", live=False
    )
    registry = UserRegistry(gov.users)
    for name in ("alice", "bob"):
        cert = issue_user_cert(ca, tmp_path / "users", name=name, role="researcher")
        registry.add(read_user_cert(cert.read_bytes(), ca_pem))
    registry.save()
    record = {"run_id": "7", "owner": "alice", "run_key": "k7", "rounds": 2}
    record |= {"submitted": "2026-11-30T00:00:00+00:00", "status": "completed"}
    gov.root.joinpath("runs.json").write_text(json.dumps({"7": record}))
    shutil.copytree(real_run[0], gov.root / "runs" / "k7" / "output")
    server, port = start_service(
        gov,
        address="127.0.0.1:0",
        server_cert=(ca / "server.crt").read_bytes(),
        server_key=(ca / "server.key").read_bytes(),
    )
    yield gov, f"localhost:{port}", tmp_path
    server.stop(grace=None)


def test_status_watch_of_a_service_run_as_a_user(service, monkeypatch, capsys):
    gov, address, root = service

    def as_user(name: str) -> None:
        for env, value in (
            ("FEDVAULT_COORDINATOR", address),
            ("FEDVAULT_USER_CERT", str(root / "users" / f"{name}.crt")),
            ("FEDVAULT_USER_KEY", str(root / "users" / f"{name}.key")),
            ("FEDVAULT_CA", str(root / "certs" / "ca.crt")),
        ):
            monkeypatch.setenv(env, value)

    as_user("alice")
    watch = ("server", "status", "--watch", "--run", "7", "--format", "json")
    code, stdout, err = fedvault(monkeypatch, capsys, *watch)
    assert code == 0, err
    views = [json.loads(line) for line in stdout.splitlines()]
    assert [v["round"] for v in views] == sorted(v["round"] for v in views)
    assert (views[-1]["status"], views[-1]["round"]) == ("completed", 2)
    assert views[-1]["sites"]["site-3"]["state"].startswith(f"excluded: {DECLINE}")
    code, stdout, err = fedvault(monkeypatch, capsys, *watch[:-2])  # the table
    assert code == 0 and "run 7: completed, round 2/2" in stdout, stdout
    as_user("bob")
    code, _, err = fedvault(monkeypatch, capsys, *watch)
    assert code == 1 and "error: refused: run 7: not yours to see" in err

    port = free_port()
    metrics = MetricsServer(
        f"localhost:{port}", book_runs(RunBook(gov.root, gov.layout))
    )
    try:
        scraped = _scrape(port)
    finally:
        metrics.close()
    assert scraped[("fedvault_runs", (("state", "completed"),))] == 1
    assert scraped[("fedvault_rounds_completed_total", (("run", "k7"),))] == 2
    assert scraped[("fedvault_epsilon_spent", (("run", "k7"), ("site", "site-1")))] > 0


def test_every_site_state_is_counted_by_kind_and_reason():
    """The states the coordinator's book of sites writes (fedvault.server.sites),
    round after round, and a stopped round: declines and failures by reason."""
    budget = "declined: budget (the round would bring lifetime epsilon to 2.1 > 2)"
    rounds = [
        {"a": TRAINED, "b": NO_REPLY, "c": NOT_SAMPLED, "d": NOT_CONNECTED},
        {"a": "rejected: update norm 9 exceeds the round's bound 3", "b": budget},
        {"a": "failed: RuntimeError: out of memory", "b": TRAINED, "d": NEXT_RUN},
    ]
    events = [{"event": "start", "rounds": 4}]
    events += [
        {"event": "round", "round": i, "site_states": states}
        for i, states in enumerate(rounds, start=1)
    ]
    events += [
        {"event": "stopped", "round": 4, "reason": "too few", "sites": {"b": budget}},
        {"event": "done", "status": "stopped", "reason": "too few"},
    ]
    view = fold(events, run="r")
    assert (view.status, view.round, view.reason) == ("stopped", 3, "too few")
    assert dict(view.sites["a"].failures) == {"rejected": 1, "error": 1}
    assert dict(view.sites["b"].failures) == {"no-reply": 1}
    assert dict(view.sites["b"].declines) == {"budget": 2}
    assert [state_kind(view.sites[n].state) for n in "abcd"] == [
        "failed", "declined", "not_sampled", "next_run",
    ]  # fmt: skip
