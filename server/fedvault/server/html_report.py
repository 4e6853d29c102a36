"""``fedvault report``: one self-contained HTML page of a run.

The page makes no network request: no scripts, no external style sheets or fonts,
every plot an inline ``data:image/png;base64`` image. It is drawn from the run
folder only: ``summary.json`` (history, sites), ``progress.jsonl`` (epsilon after
each round), ``privacy.txt`` and the model card (``model_card.json``, or one built
from the run when the folder has none).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from fedvault.common.errors import DataError, FedVaultError
from fedvault.common.files import atomic_write
from fedvault.server import model_card, report_data, report_plots, trained
from fedvault.server.rundir import (
    MODEL_FILE,
    PRIVACY_TEXT_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
)
from fedvault.server.site_validation import per_site_text

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.8em; }
.operator { color: #a05a00; } .note { color: #555; font-size: 0.9em; }
"""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    return data


def epsilon_per_round(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each site's epsilon (this run) after each round, from the progress events."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    path = run_dir / PROGRESS_FILE
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if event.get("event") != "round":
            continue
        for site, figures in (event.get("sites") or {}).items():
            eps = figures.get("epsilon_spent")
            if isinstance(eps, int | float):
                out[site].append((int(event["round"]), float(eps)))
    return out


def events_per_round(sites: Mapping[str, Any]) -> dict[str, dict[int, int]]:
    """How many sites declined, failed or had an update rejected, per round."""
    counts: dict[str, dict[int, int]] = {}
    for kind, key in (
        ("declines", "declines"),
        ("failures", "failures"),
        ("rejected updates", "rejected_updates"),
    ):
        per_round: dict[int, int] = defaultdict(int)
        for site in sites.values():
            for entry in site.get(key) or []:
                per_round[int(entry.get("round", 0))] += 1
        counts[kind] = dict(per_round)
    return counts


def _rounds_in(events: Mapping[str, Mapping[int, int]]) -> list[int]:
    return [r for per_round in events.values() for r in per_round]


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="note">{escape(alt)}: nothing to plot.</p>'
    data = base64.b64encode(png).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = escape(str(value))
    if text.startswith("[OPERATOR:"):
        return f'<span class="operator">{text}</span>'
    return text


def _rounds_table(history: Sequence[Mapping[str, Any]], *, regression: bool) -> str:
    keys: tuple[str, ...] = (
        "round",
        "accuracy",
        "auc",
        "loss",
        "val_accuracy",
        "sites_trained",
    )
    if regression:
        keys = ("round", "r2", "mae", "rmse", "loss", "val_r2", "sites_trained")
    return _table(keys, [[row.get(k) for k in keys] for row in history])


def _sites_table(sites: Mapping[str, Any]) -> str:
    rows = [
        [
            name,
            s.get("examples"),
            s.get("rounds_trained"),
            s.get("epsilon_spent"),
            s.get("epsilon_lifetime"),
            s.get("epsilon_budget"),
            len(s.get("declines") or []),
            len(s.get("failures") or []),
            len(s.get("rejected_updates") or []),
        ]
        for name, s in sites.items()
    ]
    header = (
        "site",
        "rows",
        "rounds",
        "epsilon (run)",
        "epsilon (lifetime)",
        "budget",
        "declines",
        "failures",
        "rejected",
    )
    return _table(header, rows)


def _card_html(card: Mapping[str, Any] | None) -> str:
    if card is None:
        return '<p class="note">No model card: the folder holds no model file.</p>'
    use, privacy = card["intended_use"], card["privacy"]
    parts = [
        f"<p>{escape(card['task'])}; {escape(card['model']['architecture'])}, "
        f"{card['model']['parameters']} parameters.</p>",
        "<h3>Intended use and limits</h3><ul>",
        *(
            f"<li>{_cell(v)}</li>"
            for v in (use["purpose"], use["users"], use["out_of_scope"], *use["limits"])
        ),
        "</ul><h3>Metrics on the test split (95 % intervals)</h3>",
        _test_table(card["metrics"].get("test_split")),
        "<p>Each site's own validation figure: "
        + escape(per_site_text(card["metrics"].get("per_site"), _site_metric(card)))
        + ".</p>",
        f"<h3>Privacy</h3><p>{escape(privacy['in_plain_words'])}</p>",
        "<p>Not covered: " + escape("; ".join(privacy["not_covered"])) + ".</p>",
        "<h3>Record of processing (GDPR Article 30(1))</h3>",
        _table(
            ("item", "entry"),
            [
                [k.replace("_", " "), "; ".join(v) if isinstance(v, list) else v]
                for k, v in card["record_of_processing"].items()
            ],
        ),
    ]
    return "\n".join(parts)


def _site_metric(card: Mapping[str, Any]) -> str:
    return "r2" if card["metrics"].get("validation_metric") == "R²" else "accuracy"


def _test_table(test: Mapping[str, Any] | None) -> str:
    if not test:
        return '<p class="note">No central test split in this run.</p>'

    def interval(pair: Sequence[float] | None) -> str:
        return "-" if not pair else f"[{pair[0]:.4f}, {pair[1]:.4f}]"

    names: tuple[tuple[str, str], ...] = (("accuracy", "accuracy"), ("auc", "ROC AUC"))
    if test.get("task") == "regression":
        names = (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"))
    rows = [[name, test[key], interval(test[f"{key}_ci95"])] for key, name in names]
    return f"<p>On {escape(str(test['data']))}, {test['rows']} rows.</p>" + _table(
        ("metric", "value", "95 % interval"), rows
    )


def _card(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / model_card.CARD_JSON
    if path.is_file():
        return _read_json(path)
    try:
        return model_card.build(run_dir, None)
    except FedVaultError:
        return None


def build_html(run_dir: Path) -> str:
    """The report page of the run in ``run_dir``.

    Raises:
        DataError: the folder does not exist or holds no ``summary.json``, or its
            model file is corrupted or belongs to another run.
    """
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    if not (run_dir / SUMMARY_FILE).is_file():
        raise DataError(f"{run_dir}: no {SUMMARY_FILE}; not a finished fedvault run")
    if (run_dir / MODEL_FILE).exists():
        trained.load(run_dir)  # readable, and this run's model
    summary = _read_json(run_dir / SUMMARY_FILE)
    history, sites = summary.get("history") or [], summary.get("sites") or {}
    budgets = {n: s.get("epsilon_budget") for n, s in sites.items()}
    privacy_path = run_dir / PRIVACY_TEXT_FILE
    privacy = privacy_path.read_text(encoding="utf-8") if privacy_path.is_file() else ""
    final = summary.get("final") or {}
    rounds = int(summary.get("rounds_completed") or 0)
    events = events_per_round(sites)  # a stopped run's last round is not in history
    regression = (summary.get("config") or {}).get("task") == "regression"
    quality = (
        f"R² {_cell(final.get('r2'))}, MAE {_cell(final.get('mae'))}"
        if regression
        else f"accuracy {_cell(final.get('accuracy'))}, AUC {_cell(final.get('auc'))}"
    )
    body = [
        f"<h1>fedvault run report</h1><p>{escape(str(run_dir.resolve()))}: "
        f"{escape(str(summary.get('status')))}, {rounds} of "
        f"{summary.get('rounds_planned')} rounds, {len(sites)} sites; final test "
        f"{quality}.</p>",
        "<h2>Model quality per round</h2>",
        _img(
            report_plots.metrics_plot(history, regression=regression),
            "R², MAE and RMSE per round"
            if regression
            else "accuracy, AUC and loss per round",
        ),
        _rounds_table(history, regression=regression),
        "<h2>Privacy spent per site</h2>",
        _img(
            report_plots.epsilon_plot(epsilon_per_round(run_dir), budgets),
            "epsilon per site per round",
        ),
        f"<pre>{escape(privacy)}</pre>",
        "<h2>Sites: declines, failures, rejected updates</h2>",
        _img(
            report_plots.events_plot(events, max([rounds, *_rounds_in(events)])),
            "declines and failures per round",
        ),
        _sites_table(sites),
        *report_data.section(run_dir, _table, _img),
        "<h2>Model card</h2>",
        _card_html(_card(run_dir)),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>fedvault run report</title>"
        # no request of any kind may leave the page
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report (default: ``report.html`` in the run folder)."""
    html = build_html(run_dir)
    target = out or run_dir / REPORT_FILE
    atomic_write(target, html.encode())
    return target
