"""Prometheus metrics of a coordinator's runs, on an optional loopback port.

``fedvault server serve --metrics-address 127.0.0.1:9464`` (every run of the
coordinator service) and ``fedvault server start --metrics-address ...`` (its one
run) answer ``GET /metrics`` in Prometheus' text format, with the official
``prometheus_client`` library. The figures are read, at each scrape, from the same
progress events ``server status --watch`` folds (:mod:`fedvault.server.watch`):
nothing is counted twice and a restarted coordinator reports the same values.

The metrics (name, type, labels; docs/governance.md, "Monitoring", says what each
means): ``fedvault_runs`` (gauge; state), ``fedvault_rounds_completed_total``
(counter; run), ``fedvault_rounds_planned`` (gauge; run), ``fedvault_sites``
(gauge; run, state), ``fedvault_epsilon_spent`` (gauge; run, site),
``fedvault_site_declines_total`` and ``fedvault_site_failures_total`` (counters;
run, site, reason).

``run`` is the run key (the one the audit log and the sites' ledgers use).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from fedvault.common.errors import ConfigError
from fedvault.common.net import loopback_address
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.run_book import RunBook
from fedvault.server.rundir import PROGRESS_FILE
from fedvault.server.runstate import read_events
from fedvault.server.watch import KINDS, fold, state_kind

KEY = "--metrics-address"
MetricsOption = Annotated[
    str,
    typer.Option(
        KEY,
        help="Serve Prometheus metrics of the runs on this loopback HOST:PORT "
        "(e.g. 127.0.0.1:9464); off when empty.",
    ),
]


@dataclass(frozen=True)
class RunEvents:
    """One run as the metrics see it: its key, its state, its progress events."""

    key: str
    state: str
    events: list[dict[str, Any]]


Runs = Callable[[], Iterable[RunEvents]]


def book_runs(book: RunBook) -> Runs:
    """Every run of the coordinator service (states as its book last saw them)."""

    def runs() -> Iterator[RunEvents]:
        for record in book.all():
            yield RunEvents(record.run_key, record.status, book.events(record))

    return runs


def folder_runs(layout: CoordinatorLayout) -> Runs:
    """The one run of a ``server start`` run folder, served by the coordinator
    that holds it: ``running`` until its last event says how it ended."""

    def runs() -> Iterator[RunEvents]:
        try:
            doc = tomllib.loads(layout.run_config_file.read_text())
            key = str(doc.get("run-key", "-"))
        except (OSError, tomllib.TOMLDecodeError):
            key = "-"
        yield RunEvents(key, "running", read_events(layout.output / PROGRESS_FILE))

    return runs


class RunsCollector(Collector):
    """The metrics of the runs ``runs`` gives, computed at each scrape."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("fedvault_runs", "Runs by state", labels=["state"])
        done = CounterMetricFamily(
            "fedvault_rounds_completed", "Training rounds completed", labels=["run"]
        )
        planned = GaugeMetricFamily(
            "fedvault_rounds_planned", "Rounds the study asked for", labels=["run"]
        )
        sites = GaugeMetricFamily(
            "fedvault_sites",
            "Sites per state in the last round",
            labels=["run", "state"],
        )
        epsilon = GaugeMetricFamily(
            "fedvault_epsilon_spent", "Epsilon the site spent", labels=["run", "site"]
        )
        declines = CounterMetricFamily(
            "fedvault_site_declines", "Declines", labels=["run", "site", "reason"]
        )
        failures = CounterMetricFamily(
            "fedvault_site_failures", "Failures", labels=["run", "site", "reason"]
        )
        by_state: dict[str, int] = {}
        for run in self.runs():
            view = fold(run.events, run=run.key)
            state = view.status if view.ended else run.state  # its last word
            by_state[state] = by_state.get(state, 0) + 1
            done.add_metric([run.key], view.round)
            if view.rounds is not None:
                planned.add_metric([run.key], view.rounds)
            kinds = [state_kind(s.state) for s in view.sites.values()]
            for kind in (*KINDS, "other"):
                sites.add_metric([run.key, kind], kinds.count(kind))
            for name, site in sorted(view.sites.items()):
                if site.epsilon is not None:
                    epsilon.add_metric([run.key, name], site.epsilon)
                for reason, count in sorted(site.declines.items()):
                    declines.add_metric([run.key, name, reason], count)
                for reason, count in sorted(site.failures.items()):
                    failures.add_metric([run.key, name, reason], count)
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield from (states, done, planned, sites, epsilon, declines, failures)


def check_metrics_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` on loopback.

    Raises:
        ConfigError: naming ``--metrics-address``: not HOST:PORT, or not loopback.
    """
    return loopback_address(address, key=KEY, what="the metrics endpoint")


class MetricsServer:
    """``/metrics`` on a loopback address, on a daemon thread; :meth:`close`."""

    def __init__(self, address: str, runs: Runs) -> None:
        """Bind ``address``.

        Raises:
            ConfigError: the address is not loopback, or cannot be bound.
        """
        host, port = check_metrics_address(address)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RunsCollector(runs))
        try:
            self.server, self.thread = start_http_server(
                port, addr=host, registry=registry
            )
        except OSError as exc:
            raise ConfigError(
                f"{KEY}: cannot listen on {address} ({exc.strerror})"
            ) from None
        self.port = int(self.server.server_port)
        self.url = f"http://{address.rsplit(':', 1)[0]}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
