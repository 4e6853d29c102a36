"""``fedvault client ledger``: show and verify a site's privacy ledger.

- ``show``: every recorded round, lifetime epsilon and (with ``--policy``) the
  remaining budget, as a table or ``--format json``;
- ``verify``: exit 0 when the hash chain and the keyed head are intact (and, with
  ``--anchor``, the ledger still holds the anchored record unchanged) and every
  cached RDP curve of the accountant authenticates under the site's key, exit 2
  with one line naming the problem otherwise;
- ``anchor``: the ledger's count and last hash as JSON, to keep outside the site;
- ``repair``: drop an incomplete last line left by a crash mid-append; with
  ``--recharge``, replace a torn record the head counts by a recovery record that
  charges its round again; with ``--accept-unkeyed-head``, key an older head.

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
from fedvault.client.ledger import (
    LedgerRecord,
    anchor,
    check_anchor,
    repair_ledger,
    verify_ledger,
)
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
from fedvault.common.files import atomic_write
from fedvault.common.privacy import Step, epsilon_spent

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


AnchorOption = Annotated[
    Path | None,
    typer.Option(
        "--anchor",
        help="An anchor from `ledger anchor`, kept elsewhere, or a line of a run's "
        "ledger-heads.jsonl (the head the site published).",
    ),
]


@ledger_app.command()
@errors_as_exit()
def verify(
    state: StateOption,
    dataset: Annotated[str, typer.Option()],
    anchor_file: AnchorOption = None,
) -> None:
    """Check the hash chain, the keyed head (and the anchor), and the accountant's
    cached curves: exit 0 if intact, 2 if not."""
    try:
        if anchor_file is None:
            records = verify_ledger(state, dataset)
        else:
            records = check_anchor(state, dataset, _read_anchor(anchor_file))
    except IntegrityError as exc:
        message = f"ledger of {dataset!r} failed verification: {exc}"
        raise error_exit(message, EXIT_USER_ERROR) from None
    try:
        curves = verify_cache(state)
    except IntegrityError as exc:
        message = f"accountant cache of {state} failed verification: {exc}"
        raise error_exit(message, EXIT_USER_ERROR) from None
    anchored = "" if anchor_file is None else f", anchor {anchor_file} matches"
    console.print(
        f"ok: ledger of {dataset!r} intact ({len(records)} records{anchored}); "
        f"accountant cache: {curves} curves authenticated",
        highlight=False,
    )


def _read_anchor(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such anchor file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not an anchor ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("head"), dict):
        doc = doc["head"]  # a line of a run's ledger-heads.jsonl: the published head
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not an anchor")
    return doc


@ledger_app.command("anchor")
@errors_as_exit()
def anchor_command(
    state: StateOption,
    dataset: Annotated[str, typer.Option()],
    output: Annotated[
        Path | None, typer.Option("--output", help="Write it here (else stdout).")
    ] = None,
) -> None:
    """The ledger's record count and last hash as JSON: give it to your DPO or the
    coordinator, and check the ledger against it with `verify --anchor`."""
    text = json.dumps(anchor(state, dataset), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    atomic_write(output, text.encode())
    console.print(f"ok: anchor of {dataset!r} written to {output}", highlight=False)


@ledger_app.command()
@errors_as_exit()
def repair(
    state: StateOption,
    dataset: Annotated[str, typer.Option()],
    recharge: Annotated[
        bool,
        typer.Option(
            "--recharge",
            help="Replace a torn record the head counts by a recovery record that "
            "charges its round again at its planned cost.",
        ),
    ] = False,
    steps: Annotated[int | None, typer.Option(help="The lost round's steps.")] = None,
    sample_rate: Annotated[float | None, typer.Option(help="Its sample rate.")] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="Its noise multiplier.")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Site policy (delta, accountant).")
    ] = None,
    accept_unkeyed_head: Annotated[
        bool,
        typer.Option(help="Key a head written by an older fedvault (no HMAC)."),
    ] = False,
) -> None:
    """Repair the ledger after a crash, never lowering what it says was spent:
    drop an incomplete line past the head; `--recharge` a committed record that
    was torn (docs/ledger.md, "Repair")."""
    given = (steps, sample_rate, noise_multiplier)
    lost = None
    if any(v is not None for v in given):
        if steps is None or sample_rate is None or noise_multiplier is None:
            raise ConfigError(
                "give all of --steps, --sample-rate and --noise-multiplier"
            )
        lost = Step(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
    done = repair_ledger(
        state,
        dataset,
        recharge=recharge,
        lost=lost,
        policy=load_policy(policy_file) if policy_file else None,
        accept_unkeyed_head=accept_unkeyed_head,
    )
    console.print(f"ok: ledger of {dataset!r}: {done.message}", highlight=False)
