"""``fedvault client ledger``: show and verify a site's privacy ledger.

- ``show``: every recorded round, lifetime epsilon and (with ``--policy``) the
  remaining budget, as a table or ``--format json``;
- ``verify``: exit 0 when the hash chain and head are intact and every cached RDP
  curve of the accountant authenticates under the site's key, exit 2 with one line
  naming the problem otherwise;
- ``repair``: drop an incomplete last line left by a crash mid-append (nothing else).

Every epsilon printed is computed by the accountant from the ledger's history.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedvault.client._ledger_cache import verify_cache
from fedvault.client.ledger import LedgerRecord, repair_torn_tail, verify_ledger
from fedvault.client.policy import SitePolicy, load_policy
from fedvault.common.cli import (
    EXIT_USER_ERROR,
    FormatOption,
    OutputFormat,
    command_group,
    error_exit,
    errors_as_exit,
)
from fedvault.common.errors import ConfigError, IntegrityError
from fedvault.common.privacy import epsilon_spent

ledger_app = command_group(
    "ledger", "Show, verify or repair this site's privacy ledger."
)

console = Console()


StateOption = Annotated[
    Path, typer.Option("--state", help="The site's state folder.", show_default=False)
]
DatasetOption = Annotated[
    str | None,
    typer.Option("--dataset", help="Dataset id (default: the policy's dataset-id)."),
]


def _dataset(dataset: str | None, policy: SitePolicy | None) -> str:
    if policy is not None and dataset not in (None, policy.dataset_id):
        raise ConfigError(
            f"--dataset {dataset!r} differs from the policy's dataset-id "
            f"{policy.dataset_id!r}"
        )
    if policy is not None:
        return policy.dataset_id
    if dataset is None:
        raise ConfigError("give --dataset (or --policy)")
    return dataset


def _summary(
    state: Path, dataset: str, records: list[LedgerRecord], policy: SitePolicy | None
) -> dict[str, Any]:
    """What ``show`` reports; epsilon from the accountant over the whole history."""
    delta = policy.delta if policy else (records[-1].delta if records else None)
    accountant = (
        policy.accountant if policy else (records[-1].accountant if records else None)
    )
    epsilon = 0.0
    if delta is not None and accountant is not None:
        history = [r.step for r in records]
        epsilon = epsilon_spent(history, delta=delta, accountant=accountant)
    return {
        "dataset_id": dataset,
        "state": str(state),
        "rounds": len(records),
        "runs": len({r.run_id for r in records}),
        "delta": delta,
        "accountant": accountant,
        "epsilon_lifetime": epsilon,
        "epsilon_max": policy.epsilon_max if policy else None,
        "epsilon_remaining": max(policy.epsilon_max - epsilon, 0.0) if policy else None,
        "records": [asdict(r) for r in records],
    }


def _print_table(summary: dict[str, Any]) -> None:
    table = Table(title=f"privacy ledger of {summary['dataset_id']!r}")
    for column in ("#", "run", "round", "steps", "q", "sigma", "C", "epsilon", "time"):
        table.add_column(
            column, justify="left" if column in ("run", "time") else "right"
        )
    for r in summary["records"]:
        table.add_row(
            str(r["seq"] + 1),
            r["run_id"],
            str(r["round"]),
            str(r["steps"]),
            f"{r['sample_rate']:.4g}",
            f"{r['noise_multiplier']:.4g}",
            f"{r['max_grad_norm']:.4g}",
            f"{r['epsilon']:.4f}",
            r["time"][:19],
        )
    console.print(table)
    line = (
        f"{summary['rounds']} rounds in {summary['runs']} runs; lifetime epsilon "
        f"{summary['epsilon_lifetime']:.4f}"
    )
    if summary["delta"] is not None:
        line += f" at delta={summary['delta']:g} ({summary['accountant']})"
    if summary["epsilon_max"] is None:
        line += "; remaining budget: pass --policy"
    else:
        line += (
            f"; budget {summary['epsilon_max']:g}, remaining "
            f"{summary['epsilon_remaining']:.4f}"
        )
    console.print(line, highlight=False, soft_wrap=True)


@ledger_app.command()
@errors_as_exit()
def show(
    state: StateOption,
    dataset: DatasetOption = None,
    policy_file: Annotated[
        Path | None,
        typer.Option("--policy", help="Site policy file, for the remaining budget."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every round recorded, lifetime epsilon and the remaining budget."""
    policy = load_policy(policy_file) if policy_file else None
    dataset_id = _dataset(dataset, policy)
    summary = _summary(state, dataset_id, verify_ledger(state, dataset_id), policy)
    if output_format is OutputFormat.JSON:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary)


@ledger_app.command()
@errors_as_exit()
def verify(state: StateOption, dataset: Annotated[str, typer.Option()]) -> None:
    """Check the hash chain and head, and the accountant's cached curves: exit 0 if
    intact, 2 if not."""
    try:
        records = verify_ledger(state, dataset)
    except IntegrityError as exc:
        message = f"ledger of {dataset!r} failed verification: {exc}"
        raise error_exit(message, EXIT_USER_ERROR) from None
    try:
        curves = verify_cache(state)
    except IntegrityError as exc:
        message = f"accountant cache of {state} failed verification: {exc}"
        raise error_exit(message, EXIT_USER_ERROR) from None
    console.print(
        f"ok: ledger of {dataset!r} intact ({len(records)} records); accountant "
        f"cache: {curves} curves authenticated",
        highlight=False,
    )


@ledger_app.command()
@errors_as_exit()
def repair(state: StateOption, dataset: Annotated[str, typer.Option()]) -> None:
    """Drop an incomplete last line left by a crash mid-append, if that is all."""
    dropped = repair_torn_tail(state, dataset)
    message = "dropped an incomplete last line" if dropped else "nothing to repair"
    console.print(f"ok: ledger of {dataset!r}: {message}", highlight=False)
