"""B8: deployment round latency — real processes over TLS vs the same run simulated.

One machine plays a whole consortium: a CA and a server certificate
(`fedvault certs`), a coordinator (`fedvault server start`: Flower SuperLink with
TLS and site authentication) and 3 sites (`fedvault client start`: each a Flower
SuperNode with its own key), all on 127.0.0.1. The sites train on the exact
partitions, and the coordinator evaluates on the exact test split, that
`fedvault simulate --sites 3` uses with the same seed; same model, same DP-SGD
settings. Round times come from each run's own progress events.

Each site runs in one of two ways: ``fork`` (fedvault's default: a launcher that
imports the ClientApp once and forks a process per message, see
`fedvault.client.runtime`) or ``subprocess`` (Flower's own launcher: a fresh
interpreter per message). ``fork-secagg`` is the default way with SecAgg+ on (three
more message exchanges a round), compared with the simulation in the clear.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SITES = 3


def _fedvault() -> str:
    return str(Path(sys.executable).with_name("fedvault"))


def _run(*args: object) -> None:
    subprocess.run(  # noqa: S603 - our own CLI, fixed argv
        [_fedvault(), *map(str, args)], check=True, capture_output=True, timeout=120
    )


def _free_port() -> int:
    from fedvault.common.processes import free_port

    return free_port()


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _timings(events: list[dict[str, Any]], started: float) -> dict[str, Any]:
    ready = next(e["time"] for e in events if e["event"] == "ready")
    rounds = [e for e in events if e["event"] == "round"]
    seconds = [float(e["seconds"]) for e in rounds]
    return {
        "startup_seconds": ready - started,
        "round_seconds": seconds,
        "all_rounds_seconds": rounds[-1]["time"] - ready,
        "later_round_mean": sum(seconds[1:]) / max(len(seconds) - 1, 1),
    }


def simulation(rounds: int) -> dict[str, Any]:
    from fedvault.server import simulate as sim

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = sim.load_config({"sites": SITES, "rounds": rounds})
        started = time.time()
        summary = sim.run(cfg, out)
        result = _timings(_events(out / "progress.jsonl"), started)
    return result | {"accuracy": summary["final"]["accuracy"]}


def _write_consortium(
    root: Path, rounds: int, isolation: str, secagg: bool = False
) -> dict[str, Path]:
    import tomli_w

    from fedvault.server import simulate as sim

    prepared = sim.prepare_data(sim.load_config({"sites": SITES, "rounds": rounds}))
    _run("certs", "init", root / "certs")
    _run("certs", "server", root / "certs", "--host", "localhost")
    (root / "data").mkdir()
    assert prepared.test is not None
    prepared.test.to_parquet(root / "data" / "test.parquet", index=False)
    fleet = _free_port()
    coordinator = {
        "coordinator": {
            "run-dir": "run",
            "certs": "certs",
            "expected-sites": SITES,
            "fleet-address": f"127.0.0.1:{fleet}",
            "control-address": f"127.0.0.1:{_free_port()}",
            "test-data": "data/test.parquet",
            "timeout": 900.0,
        },
        "training": {
            "rounds": rounds,
            "min-sites": SITES,
            "round-timeout": 300.0,
            "secagg": secagg,
        },
    }
    (root / "coordinator.toml").write_text(tomli_w.dumps(coordinator))
    configs = {}
    for name, part in prepared.sites:
        assert not isinstance(part, Path)
        part.to_parquet(root / "data" / f"{name}.parquet", index=False)
        _run("client", "keygen", root / "keys" / name, "--name", name)
        _run(
            "server", "sites", "add", name, root / "keys" / name / "site.pub",
            "--config", root / "coordinator.toml",
        )  # fmt: skip
        site = {
            "name": name,
            "coordinator": f"localhost:{fleet}",
            "ca-certificate": "certs/ca.crt",
            "private-key": f"keys/{name}/site.key",
            "data": f"data/{name}.parquet",
            "state-dir": f"state/{name}",
            "runtime-address": f"127.0.0.1:{_free_port()}",
            "isolation": isolation,
        }
        privacy = {"dataset-id": "bench", "epsilon-max": 100.0, "delta": 1e-5}
        configs[name] = root / f"{name}.toml"
        configs[name].write_text(tomli_w.dumps({"site": site, "privacy": privacy}))
    return configs


def _start(root: Path, name: str, *args: object) -> subprocess.Popen[bytes]:
    log = (root / f"{name}.out").open("wb")
    with log:
        return subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
            [_fedvault(), *map(str, args)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def deployment(rounds: int, isolation: str, secagg: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = _write_consortium(root, rounds, isolation, secagg)
        config = root / "coordinator.toml"
        started = time.time()
        procs = [_start(root, "coordinator", "server", "start", "--config", config)]
        try:
            live = root / "run" / "coordinator.json"
            deadline = time.monotonic() + 120
            while "run-id" not in (live.read_text() if live.exists() else ""):
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError((root / "coordinator.out").read_text()[-2000:])
                time.sleep(0.2)
            for name, site in configs.items():
                procs.append(_start(root, name, "client", "start", "--config", site))
            code = procs[0].wait(timeout=900)
            if code != 0:
                raise RuntimeError((root / "coordinator.out").read_text()[-2000:])
        finally:
            _stop(procs)
        output = root / "run" / "output"
        summary = json.loads((output / "summary.json").read_text())
        result = _timings(_events(output / "progress.jsonl"), started)
    return result | {"accuracy": summary["final"]["accuracy"]}


def _listing(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def run(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 5
    sim = simulation(rounds)
    print(
        f"B8 simulation: rounds {_listing(sim['round_seconds'])} s",
        flush=True,
    )
    results: dict[str, Any] = {"sites": SITES, "rounds": rounds, "simulation": sim}
    cases = {"fork": ("fork", False)}
    if not quick:
        cases |= {"subprocess": ("subprocess", False), "fork-secagg": ("fork", True)}
    for name, (isolation, secagg) in cases.items():
        dep = deployment(rounds, isolation, secagg)
        dep["ratio_all_rounds"] = dep["all_rounds_seconds"] / sim["all_rounds_seconds"]
        dep["ratio_later_rounds"] = dep["later_round_mean"] / sim["later_round_mean"]
        results[name] = dep
        print(
            f"B8 deployment ({name}): rounds "
            f"{_listing(dep['round_seconds'])} s; all rounds "
            f"{dep['ratio_all_rounds']:.2f}x, rounds 2+ "
            f"{dep['ratio_later_rounds']:.2f}x the simulation",
            flush=True,
        )
    return results
