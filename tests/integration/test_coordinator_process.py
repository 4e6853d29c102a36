"""The coordinator process on its own: refusals before start, SIGTERM, --insecure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
from consortium import coordinator_toml, wait_for_run

from fedvault.common import certs
from fedvault.common.errors import ConfigError
from fedvault.server import coordinator as coord
from fedvault.server.deploy import load_coordinator_config


def test_missing_certificates_refuse_before_any_process(tmp_path):
    cfg = load_coordinator_config(coordinator_toml(tmp_path))
    with pytest.raises(ConfigError, match="certs init"):
        coord.start(cfg)
    assert not (cfg.run_dir / "superlink" / "superlink.log").exists()


def test_certificate_of_another_ca_refuses_before_any_process(tmp_path):
    certs.create_ca(tmp_path / "certs")
    certs.issue_server_cert(tmp_path / "certs", host="localhost")
    certs.create_ca(tmp_path / "other")
    (tmp_path / "certs" / "ca.crt").unlink()
    (tmp_path / "other" / "ca.crt").rename(tmp_path / "certs" / "ca.crt")
    cfg = load_coordinator_config(coordinator_toml(tmp_path))
    with pytest.raises(ConfigError, match="invalid"):
        coord.start(cfg)
    assert not (cfg.run_dir / "superlink" / "superlink.log").exists()


def _flower_pids(root: Path) -> list[int]:
    marker = f"FLWR_HOME={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_insecure_coordinator_serves_http_and_stops_cleanly_on_sigterm(tmp_path):
    """--insecure: plain HTTP Control API on its private socket, no port; SIGTERM
    leaves nothing behind."""
    config = coordinator_toml(tmp_path)
    cfg = load_coordinator_config(config)
    code = (
        "import sys; from fedvault.server.server_cli import server_app; "
        "server_app(sys.argv[1:])"
    )
    out = (tmp_path / "coordinator.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "start", "--config", str(config), "--insecure"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    live = cfg.run_dir / "coordinator.json"
    try:
        wait_for_run(proc, cfg.run_dir, tmp_path / "coordinator.out")
        doc = json.loads(live.read_text())
        assert doc["insecure"] is True
        url = f"http://{cfg.options.control_address}/health"
        with pytest.raises(urllib.error.URLError):  # no Control port at all
            urllib.request.urlopen(url, timeout=5)
        transport = httpx.HTTPTransport(uds=doc["control-socket"])
        with httpx.Client(transport=transport) as client:
            assert client.get(url).status_code == 200
        proc.send_signal(signal.SIGTERM)  # the CLI itself, not its process group
        proc.wait(timeout=40)
        deadline = time.monotonic() + 15
        while _flower_pids(cfg.run_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _flower_pids(cfg.run_dir) == []
        assert not live.exists()
        text = (tmp_path / "coordinator.out").read_text()
        assert "INSECURE" in text or "--insecure" in text
        assert "coordinator stopped" in text and "stopped by SIGTERM" in text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _flower_pids(cfg.run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out.close()
