"""The coordinator's health endpoint: a real HTTP server on loopback answering with
the run folder's state (503 unless running) and every site's last round state."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys

import pytest

from fedvault.common.errors import ConfigError
from fedvault.common.processes import free_port
from fedvault.server.deploy import CoordinatorLayout, parse_coordinator_config
from fedvault.server.health import HealthServer, health_doc

HOLD = (
    "import sys, time; from pathlib import Path; "
    "from fedvault.common.files import PidLock; "
    "PidLock(Path(sys.argv[1]), what='t').acquire(); print('held', flush=True); "
    "time.sleep(60)"
)


def _get(address: str, path: str = "/health") -> tuple[int, dict]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        return reply.status, json.loads(body) if path == "/health" else {}
    finally:
        conn.close()


def test_health_answers_with_the_run_state(tmp_path):
    layout = CoordinatorLayout(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    server = HealthServer(address, lambda: health_doc(layout, rounds=5))
    try:
        code, doc = _get(address)
        assert (code, doc["state"], doc["rounds"]) == (503, "new", 5)
        layout.output.mkdir()
        event = {"event": "round", "round": 1, "site_states": {"a": "trained"}}
        (layout.output / "progress.jsonl").write_text(json.dumps(event) + "\n")
        holder = subprocess.Popen(  # a coordinator holding the folder
            [sys.executable, "-c", HOLD, str(layout.lock)], stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            code, doc = _get(address)
        finally:
            holder.kill()
            holder.communicate()
        assert (code, doc["state"], doc["sites"]) == (200, "running", {"a": "trained"})
        assert _get(address, "/other")[0] == 404
    finally:
        server.close()


def test_health_address_must_be_loopback(tmp_path):
    raw = {"coordinator": {"health-address": "0.0.0.0:9096"}, "training": {}}
    with pytest.raises(ConfigError, match=r"health-address: '0\.0\.0\.0' must be"):
        parse_coordinator_config(raw, base=tmp_path)
