"""``fedvault server status``: a run folder's state once, or (``--watch``) a run's
rounds, per-site states, epsilon and declines live until it ends, from the run
folder's ``progress.jsonl`` (``server start``) or from the coordinator service's
``WatchRun`` stream as a user (``server serve``, ``--run RUN_ID``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from fedvault.common.cli import FormatOption, OutputFormat, output_console, say
from fedvault.common.errors import ConfigError, FederationError
from fedvault.proto import coordinator_pb2 as pb
from fedvault.server import control
from fedvault.server.deploy import CoordinatorLayout, load_coordinator_config
from fedvault.server.governance_client import TIMEOUT, UserCredentials, call, connect
from fedvault.server.registry import SiteRegistry
from fedvault.server.rundir import PROGRESS_FILE
from fedvault.server.runstate import RunState, inspect_run, read_events, round_states
from fedvault.server.superlink import read_live
from fedvault.server.watch import RunView, fold, render

console = output_console()
POLL = 1.0  # seconds between two reads of a run folder's progress.jsonl
Show = Callable[[RunView], None]


def status_doc(config: Path) -> dict[str, Any]:
    """The run folder's state, Flower's view of the run and every site's state."""
    cfg = load_coordinator_config(config)
    layout = CoordinatorLayout(cfg.run_dir)
    registry = SiteRegistry(layout.registry)
    folder = inspect_run(layout, rounds=cfg.training.rounds)
    live = read_live(layout)
    doc: dict[str, Any] = {
        "running": folder.state is RunState.RUNNING,
        "state": folder.state.value,
        "message": folder.message(cfg.source),
        "run-dir": str(cfg.run_dir),
        "pid": folder.pid,
        "leftovers": [str(p) for p in folder.leftovers],
    }
    nodes: dict[int, dict[str, Any]] = {}
    if live is not None:
        keys = ("fleet-address", "control-address", "control-socket", "run-id")
        doc |= {k: live.get(k) for k in keys}
        try:  # the coordinator may be stopping meanwhile: say so, do not fail
            if not live.get("insecure"):
                nodes = {int(n["node-id"]): n for n in control.list_nodes(layout)}
            if live.get("run-id") is not None:
                doc["run-status"] = control.run_status(layout, int(live["run-id"]))
        except FederationError as exc:
            doc["run-status"] = f"not answering ({exc})"
    doc["round"] = folder.rounds_done
    doc["rounds"] = cfg.training.rounds
    last: dict[str, str] = {}
    for event in read_events(layout.output / PROGRESS_FILE):
        last = round_states(event) or last
    doc["sites"] = [
        {
            "name": e.name,
            "node-id": e.node_id,
            "fingerprint": e.fingerprint,
            "status": _site_state(e.node_id, nodes),
            "last-round": last.get(e.name, "-"),
        }
        for e in registry.sites.values()
    ]
    doc["sites"] += control.rogue_nodes(nodes, registry)
    return doc


def _site_state(node_id: int | None, nodes: dict[int, dict[str, Any]]) -> str:
    """Flower's view (online, offline, registered) while running; else ours."""
    if node_id is None:
        return "pending"
    if node_id in nodes:
        return str(nodes[node_id].get("status", "unknown"))
    return "registered" if not nodes else "unknown"


def print_sites(sites: list[dict[str, Any]]) -> None:
    table = Table(title="Sites")
    columns = ("name", "node id", "status", "last round", "key fingerprint")
    for col in columns:
        table.add_column(col)
    for s in sites:
        table.add_row(
            s["name"],
            str(s["node-id"] or "-"),
            s.get("status", "-"),
            s.get("last-round", "-"),
            s["fingerprint"],
        )
    console.print(table)


def _user_option(env: str, text: str) -> Any:
    return typer.Option(envvar=env, help=f"{text} (with --run; as `server remote`).")


def status(
    config: Annotated[Path, typer.Option("--config", help="coordinator.toml")] = Path(
        "coordinator.toml"
    ),
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow the run live until it ends: rounds, each site's state, "
            "epsilon spent, declines and failures (Ctrl-C stops watching).",
        ),
    ] = False,
    run: Annotated[
        str,
        typer.Option(
            "--run",
            help="With --watch: a run of the coordinator service (`server serve`), "
            "followed through its WatchRun stream as a user.",
        ),
    ] = "",
    coordinator: Annotated[
        str, _user_option("FEDVAULT_COORDINATOR", "HOST:PORT of the service")
    ] = "",
    cert: Annotated[Path | None, _user_option("FEDVAULT_USER_CERT", "NAME.crt")] = None,
    key: Annotated[Path | None, _user_option("FEDVAULT_USER_KEY", "NAME.key")] = None,
    ca: Annotated[Path | None, _user_option("FEDVAULT_CA", "ca.crt")] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """The run folder's state (new, running, stopped, failed, completed) and what
    to do about it, the current round, and each site's state; with --watch, the
    run followed live until it ends (--format json: one JSON line per change)."""
    if run and not watch:
        raise ConfigError("--run: only with --watch (`server remote run` shows it)")
    if watch:
        show, close = _shower(output_format)
        try:
            if run:
                if not (coordinator and cert and key and ca):
                    raise ConfigError(
                        "--run: needs --coordinator, --cert, --key and --ca (or "
                        "FEDVAULT_COORDINATOR, FEDVAULT_USER_CERT, "
                        "FEDVAULT_USER_KEY, FEDVAULT_CA)"
                    )
                follow_service(coordinator, UserCredentials(cert, key, ca), run, show)
            else:
                follow_folder(config, show)
        except KeyboardInterrupt:
            pass  # the user stopped watching; the run goes on
        finally:
            close()
        return
    doc = status_doc(config)
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    say(console, f"{doc['state']}: {doc['message']}")
    if doc["running"] and "fleet-address" in doc:
        say(
            console,
            f"Fleet API {doc['fleet-address']}, Control API on the private socket "
            f"{doc.get('control-socket')}; run {doc.get('run-id')}: "
            f"{doc.get('run-status', '-')}",
        )
    print_sites(doc["sites"])


def _shower(output_format: OutputFormat) -> tuple[Show, Callable[[], None]]:
    """How each new view is shown (a JSON line, or a live table) and the end."""
    if output_format is OutputFormat.JSON:

        def line(view: RunView) -> None:
            sys.stdout.write(json.dumps(view.as_dict()) + "\n")
            sys.stdout.flush()

        return line, lambda: None
    live = Live(console=console, auto_refresh=False)
    live.start()

    def close() -> None:
        live.stop()
        if not console.is_terminal:  # the last table, whole, ends with a line
            console.line()

    return lambda view: live.update(render(view), refresh=True), close


def follow_folder(config: Path, show: Show) -> RunView:
    """Show a ``server start`` run folder's progress until the run ends (its last
    event, or no coordinator holds the folder any more); a new folder is waited
    for."""
    cfg = load_coordinator_config(config)
    layout = CoordinatorLayout(cfg.run_dir)
    shown: dict[str, Any] | None = None
    while True:
        view = fold(read_events(layout.output / PROGRESS_FILE), run=str(cfg.run_dir))
        view.rounds = view.rounds or cfg.training.rounds
        state = inspect_run(layout, rounds=cfg.training.rounds).state
        if not view.ended and state not in (RunState.RUNNING, RunState.NEW):
            view.ended, view.status = True, state.value
        if view.as_dict() != shown:
            show(view)
            shown = view.as_dict()
        if view.ended:
            return view
        time.sleep(POLL)


def follow_service(
    address: str, user: UserCredentials, run_id: str, show: Show
) -> RunView:
    """Show run ``run_id`` of the coordinator service from its WatchRun stream
    until it ends.

    Raises:
        RefusedError: the user may not watch the run.
        FederationError: the service is not reachable.
    """
    events: list[dict[str, Any]] = []
    with connect(address, user) as stub:
        view = fold(events, run=run_id)

        def stream() -> None:
            for event in stub.WatchRun(pb.RunRef(run_id=run_id)):
                events.append(json.loads(event.event_json))
                show(fold(events, run=run_id))

        call(stream)
        view = fold(events, run=run_id)
        if not view.ended:  # stopped or failed without a last event
            info = call(lambda: stub.GetRun(pb.RunRef(run_id=run_id), timeout=TIMEOUT))
            view.ended, view.status = True, info.status
            view.rounds = view.rounds or info.rounds
            show(view)
    return view
