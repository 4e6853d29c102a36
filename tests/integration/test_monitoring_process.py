"""Monitoring a real `fedvault server start` (issue 17), in real processes on
127.0.0.1 with TLS: `--metrics-address` is scraped over HTTP while the run goes on,
and `server status --watch --format json`, started before the coordinator, follows
the run to its end and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.request

import pytest
from consortium import Consortium, prepare_two_sites, wait_until
from prometheus_client.parser import text_string_to_metric_families

from fedvault.common.processes import free_port

SERVER = "fedvault.server.server_cli:server_app"
CLIENT = "fedvault.client.client_cli:client_app"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes"),
]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_watch_of_a_running_coordinator(tmp_path):
    prepare_two_sites(tmp_path, rounds=2, min_sites=2)
    port = free_port()
    watch = subprocess.Popen(
        [sys.executable, "-c", "from fedvault.common.cli import main; main()",
         "server", "status", "--watch", "--config", "coordinator.toml",
         "--format", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    procs = Consortium(tmp_path)
    scraped: list[dict] = []
    try:
        coordinator = procs.launch(
            "coordinator", SERVER, "start", "--config", "coordinator.toml",
            "--metrics-address", f"127.0.0.1:{port}",
        )  # fmt: skip
        for name in ("site-0", "site-1"):
            procs.launch(name, CLIENT, "start", "--config", f"{name}.toml")

        def round_one() -> bool:
            scraped.append(_scrape(port))
            return any(
                k[0] == "fedvault_rounds_completed_total" and v >= 1
                for k, v in scraped[-1].items()
            )

        wait_until("round 1 in the metrics", round_one, 300, coordinator)
        assert coordinator.wait(timeout=300) == 0, procs.output("coordinator")[-3000:]
        out, err = watch.communicate(timeout=60)
    finally:
        watch.kill()
        procs.stop_all()
    during = scraped[-1]
    assert during[("fedvault_runs", (("state", "running"),))] == 1
    config = tmp_path / "run" / "superlink" / "run-config.toml"
    key = tomllib.loads(config.read_text())["run-key"]
    runs = {dict(labels)["run"] for (_, labels) in during if "run" in dict(labels)}
    assert runs == {key}
    spent = [v for (name, _), v in during.items() if name == "fedvault_epsilon_spent"]
    assert len(spent) == 2 and all(v > 0 for v in spent)
    assert watch.returncode == 0, err
    views = [json.loads(line) for line in out.decode().splitlines()]
    assert views[0]["ended"] is False and views[-1]["ended"] is True
    assert (views[-1]["status"], views[-1]["round"]) == ("completed", 2)
    assert {s["state"] for s in views[-1]["sites"].values()} == {"trained"}
    assert not _scrape(port)  # the endpoint ends with the coordinator
