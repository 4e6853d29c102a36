"""The tables ``fedvault simulate`` prints at the end of a run."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedvault.common.partition import VALIDATION_FROM_ROWS, VALIDATION_SHARE


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _eps(value: float | None) -> str:
    """Epsilon rounded *down* to 3 decimals: a printed figure never overstates the
    margin to a budget (2.99989 shows as 2.999, not 3.000)."""
    return "-" if value is None else f"{math.floor(value * 1000) / 1000:.3f}"


_COLUMNS = {  # (title, key) per round: classification, regression
    False: (("accuracy", "accuracy"), ("AUC", "auc"), ("loss", "loss")),
    True: (("MAE", "mae"), ("RMSE", "rmse"), ("R2", "r2"), ("loss", "loss")),
}
_SITE_COLUMN = {False: ("site val. acc.", "accuracy"), True: ("site val. R2", "r2")}


def _regression(summary: dict[str, Any]) -> bool:
    return bool(summary.get("config", {}).get("task") == "regression")


def print_tables(console: Console, summary: dict[str, Any], out: Path) -> None:
    """The run's tables and closing lines, as ``fedvault simulate`` prints them."""
    console.print(_rounds_table(summary))
    console.print(_sites_table(summary))
    notes: dict[str, list[str]] = {}
    for name, s in summary["sites"].items():
        if s.get("policy_note"):
            notes.setdefault(s["policy_note"], []).append(name)
    for note, names in notes.items():
        console.print(f"{', '.join(names)}: {note}.", highlight=False)
    client = summary.get("client_dp")
    if client is not None:
        eps = client.get("epsilon")
        spent = (
            f"epsilon {eps:.3f} at delta {client['delta']:g}"
            if eps is not None
            else "no epsilon (adaptive clipping is not accounted)"
        )
        console.print(
            f"Client-level DP ({client['mode']}): {spent}, "
            f"{client['releases']} release(s)."
        )
    if summary.get("secure_aggregation"):
        console.print(
            "Secure aggregation (SecAgg+): the coordinator saw only the sum "
            "of the sites' updates."
        )
    if summary["status"] != "completed":
        console.print(f"[yellow]Run stopped early:[/] {summary['stop_reason']}")
    if not summary["history"]:
        console.print(f"No round completed. Reports in [bold]{out}[/].")
        return
    console.print(
        f"{_measured(summary)} Results in [bold]{out}[/] (summary.json, "
        "privacy.txt, metrics.csv, model.pt)."
    )


def _rounds_table(summary: dict[str, Any]) -> Table:
    """Per round: the global model on the test split (classification: accuracy,
    AUC, loss; regression: MAE, RMSE, R2, loss) and on the sites' validation rows."""
    regression = _regression(summary)
    title, key = _SITE_COLUMN[regression]
    columns = (*_COLUMNS[regression], (title, f"val_{key}"))
    rounds = Table(title=f"Global model per round ({_evaluated_on(summary)})")
    for col in ("round", *(c for c, _ in columns), "sites", "s"):
        rounds.add_column(col, justify="right")
    for row in summary["history"]:
        rounds.add_row(
            str(row["round"]),
            *(_fmt(row.get(k)) for _, k in columns),
            str(row["sites_trained"]),
            _fmt(row.get("seconds"), ".1f"),
        )
    return rounds


def _measured(summary: dict[str, Any]) -> str:
    """The closing line's figures of the final round."""
    final = summary["final"]
    key = _SITE_COLUMN[_regression(summary)][1]
    if final.get(key) is None and final.get(f"val_{key}") is None:
        measured = f"The model was not evaluated: {_NOT_EVALUATED}."
    elif key == "r2":
        where = "test" if final.get("r2") is not None else "site validation"
        prefix = "" if where == "test" else "val_"
        measured = (
            f"Final {where} R2 {_fmt(final.get(prefix + 'r2'))}, MAE "
            f"{_fmt(final.get(prefix + 'mae'))}, RMSE "
            f"{_fmt(final.get(prefix + 'rmse'))}."
        )
    elif final.get("accuracy") is None:
        measured = (
            f"Final accuracy on the sites' own validation splits "
            f"{_fmt(final.get('val_accuracy'))} (no central test data)."
        )
    else:
        measured = (
            f"Final test accuracy {_fmt(final.get('accuracy'))}, "
            f"AUC {_fmt(final.get('auc'))}."
        )
    return measured


_NOT_EVALUATED = (
    "no central test data (--vaults) and no site holds a validation split (a "
    f"site holds back {VALIDATION_SHARE:.0%} of its rows from "
    f"{VALIDATION_FROM_ROWS} rows on)"
)


def _evaluated_on(summary: dict[str, Any]) -> str:
    """What the per-round figures were measured on."""
    rows = summary["history"]
    key = _SITE_COLUMN[_regression(summary)][1]
    if any(row.get(key) is not None for row in rows):
        return "held-out test split"
    if any(row.get(f"val_{key}") is not None for row in rows):
        return "the sites' validation splits"
    return "not evaluated" if rows else "no round completed"


def _sites_table(summary: dict[str, Any]) -> Table:
    """Per site: its own figures, at its own delta with its own accountant (in the
    title when every site used the same, else in two more columns)."""
    dp = summary["dp"]
    shared = bool(dp["enabled"] and dp["delta"] is not None and dp["accountant"])
    if not dp["enabled"]:
        title = "Sites ([bold red]NO differential privacy[/])"
    elif shared:
        title = (
            f"Privacy per site: sample-level DP-SGD, delta={dp['delta']:g}, "
            f"{dp['accountant']} accountant (the sites' own)"
        )
    else:
        title = "Privacy per site: sample-level DP-SGD, at each site's own delta"
    # Under DP a site reports its row count only as a noisy count (docs/privacy.md)
    examples = "examples (noisy)" if dp["enabled"] else "examples"
    columns = ["site", examples, "rounds", "ε this run", "ε lifetime", "budget"]
    columns += [] if shared or not dp["enabled"] else ["δ", "accountant"]
    sites = Table(title=title)
    # Nothing is cut in a narrow terminal (hospita… could be any hospital): the
    # headers of the figures wrap first, and a name over 22 characters is
    # folded onto lines of its own (:func:`_name`).
    sites.add_column("site", no_wrap=True, overflow="fold")
    for col in [*columns[1:], "sigma", "declined"]:
        sites.add_column(col, justify="right", overflow="fold")
    for name, s in summary["sites"].items():
        declined = s["declines"]
        last = f" from r{declined[0]['round']}" if declined else ""
        row = [_name(name), str(s["examples"]), str(s["rounds_trained"])]
        row += [_eps(s["epsilon_spent"]), _eps(s["epsilon_lifetime"])]
        row += [_fmt(s["epsilon_budget"], "g")]
        if len(columns) > 6:
            row += [_fmt(s.get("delta"), "g"), s.get("accountant") or "-"]
        sites.add_row(
            *row, _fmt(s["noise_multiplier"], ".3f"), f"{len(declined)}{last}"
        )
    for name in summary["excluded_sites"]:
        dashes = ["-"] * (len(columns) - 2)
        sites.add_row(_name(name), "-", "0", *dashes, "excluded")
    if summary["excluded_sites"]:
        sites.caption = "; ".join(
            f"{name}: {why}" for name, why in summary["excluded_sites"].items()
        )
        sites.caption_justify = "left"
    return sites


def _name(name: str, width: int = 22) -> str:
    """A site's name, whole, on lines of at most ``width`` characters."""
    return "\n".join(textwrap.wrap(name, width, break_on_hyphens=True)) or name
