"""A local user on the coordinator's host (issue 14, case 5): Flower's Control API
has no account authentication, so fedvault never opens its port. A client with the
public ca.crt and the Control address reaches nothing; another account cannot
enter the socket's folder; a node registered behind fedvault's back is shown."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from consortium import Consortium, prepare_two_sites, run_fedvault, wait_for_run

from fedvault.common.net import port_in_use
from fedvault.common.processes import flower_bin, flower_env, free_port
from fedvault.server import _flower, control
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.registry import SiteRegistry, read_public_key

SERVER = "fedvault.server.server_cli:server_app"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _attacker(root: Path, control_address: str, *args: str) -> dict[str, object]:
    """`flwr ARGS` as another local user would run it: its own FLWR_HOME naming
    the Control address and the public ca.crt, nothing else."""
    home = root / "attacker"
    home.mkdir(exist_ok=True)
    conn = {"address": control_address, "root-certificates": str(root / "certs/ca.crt")}
    doc = {"superlink": {"default": "mine", "mine": conn}}
    (home / "config.toml").write_text(tomli_w.dumps(doc))
    env = flower_env(home)
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [flower_bin("flwr"), *args, "mine", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        result: dict[str, object] = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"success": False, "output": out.stdout + out.stderr}
    return result


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_the_control_api_answers_only_the_coordinators_account(
    monkeypatch, capsys, tmp_path
):
    prepare_two_sites(tmp_path, rounds=1, min_sites=2)
    config = tmp_path / "coordinator.toml"
    cons = Consortium(tmp_path)
    coordinator = cons.launch("coordinator", SERVER, "start", "--config", str(config))
    layout = CoordinatorLayout(tmp_path / "run")
    try:
        wait_for_run(coordinator, layout.root, tmp_path / "coordinator.out")
        live = json.loads(layout.live.read_text())
        run_id = int(live["run-id"])
        socket = Path(live["control-socket"])

        # the Control port is closed: nothing to list, register or stop with ca.crt
        site_pub = tmp_path / "keys" / "site-0" / "site.pub"
        for args in (
            ("ls",),
            ("supernode", "register", str(site_pub)),
            ("stop", str(run_id)),
        ):
            result = _attacker(tmp_path, live["control-address"], *args)
            assert result.get("success") is False, (args, result)
            assert "Connection to the SuperLink is unavailable" in str(
                result.get("error-message")
            ), result

        # the socket's folder is the coordinator account's own, mode 0700
        folder = socket.parent.stat()
        assert folder.st_uid == os.getuid()
        assert stat.S_IMODE(folder.st_mode) == 0o700
        if os.getuid() == 0:  # another account, for real
            probe = (
                "import socket, sys; s = socket.socket(socket.AF_UNIX); "
                "s.connect(sys.argv[1])"
            )
            out = subprocess.run(
                [*NOBODY, sys.executable, "-c", probe, str(socket)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.returncode != 0 and "PermissionError" in out.stderr

        # the run is untouched, and fedvault's own calls still work
        assert control.run_status(layout, run_id).startswith("running")

        # a registration behind fedvault's back is shown as rogue
        rogue_key = tmp_path / "keys" / "rogue"
        code, _ = run_fedvault(
            monkeypatch, capsys, "client", "keygen", str(rogue_key), "--name", "rogue"
        )
        assert code == 0
        node = control.register_key(
            layout, "rogue", (rogue_key / "site.pub").read_text().strip()
        )
        code, out = run_fedvault(
            monkeypatch,
            capsys,
            "server",
            "sites",
            "list",
            "--config",
            str(config),
            "--format",
            "json",
        )
        assert code == 0
        rows = {row["node_id"]: row for row in json.loads(out)}
        assert rows[node]["status"] == control.ROGUE
        assert {r["name"] for r in rows.values()} >= {"site-0", "site-1"}
        code, out = run_fedvault(
            monkeypatch, capsys, "server", "status", "--config", str(config)
        )
        assert code == 0 and "rogue" in out and str(node) in out

        # ... and unregistered during the run, its key fingerprint logged
        _, rogue_fp = read_public_key(rogue_key / "site.pub")
        said = f"unregistered node {node} (key {rogue_fp})"
        deadline = time.monotonic() + control.ROGUE_GRACE_S + 60
        while said not in cons.output("coordinator") and time.monotonic() < deadline:
            time.sleep(1)
        assert said in cons.output("coordinator"), cons.output("coordinator")[-2000:]
        live_nodes = control.registrations(layout)
        assert node not in live_nodes
        registry = SiteRegistry(layout.registry)
        assert {e.node_id for e in registry.sites.values()} <= set(live_nodes)
        assert control.run_status(layout, run_id).startswith("running")
    finally:
        cons.stop_all()
    assert not socket.parent.exists()


def _flwr_ls(layout, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [flower_bin("flwr"), "ls", _flower.CONNECTION, "--format", "json"],
        cwd=layout.work,
        env=flower_env(layout.flwr_home, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_the_simulation_superlink_opens_no_control_port(tmp_path):
    layout = _flower.SimulationLayout(tmp_path)
    port = free_port()
    layout.write({}, port)
    with (
        (tmp_path / "flower.log").open("ab") as log,
        _flower.superlink(layout, port, log),
    ):
        socket = Path(layout.socket_file.read_text())
        assert not port_in_use(f"127.0.0.1:{port}", key="port")
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        # fedvault's own calls reach it through the socket ...
        mine = _flwr_ls(layout, layout.env())
        assert json.loads(mine.stdout)["success"] is True, mine.stdout
        # ... a client that knows only the port reaches nothing
        env = {"PYTHONPATH": ""}
        other = json.loads(_flwr_ls(layout, env).stdout)
        assert other["success"] is False
        assert "Connection to the SuperLink is unavailable" in other["error-message"]
    assert not socket.parent.exists() and not layout.socket_file.exists()
