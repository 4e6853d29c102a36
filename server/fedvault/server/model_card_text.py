"""The model card as Markdown (``model_card.md``), from its JSON form."""

from __future__ import annotations

import math
from typing import Any

from fedvault.server.site_validation import per_site_text


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _eps(value: Any) -> str:
    """Epsilon rounded down to 3 decimals, as every table: a figure within a
    budget never prints as reaching it (2.99989 -> 2.999)."""
    if not isinstance(value, float):
        return _num(value)
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _interval(pair: list[float] | None) -> str:
    return "-" if not pair else f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _metrics(metrics: dict[str, Any]) -> list[str]:
    test = metrics.get("test_split")
    validation = metrics.get("validation_metric", "accuracy")
    if not test:
        return [
            "No central test split in this run (e.g. the sites held all data); "
            f"last validation {validation} at the sites: "
            f"{_num(metrics.get('validation_at_sites'))}.",
        ]
    if test.get("task") == "regression":
        return _regression(test, metrics)
    return [
        f"On {test['data']} ({test['rows']} rows; per class: "
        + ", ".join(f"{k}: {v}" for k, v in test["class_counts"].items())
        + "):",
        "",
        "| metric | value | 95 % interval | method |",
        "|---|---|---|---|",
        f"| accuracy | {_num(test['accuracy'])} | {_interval(test['accuracy_ci95'])} "
        f"| {test['accuracy_ci_method']} |",
        f"| ROC AUC | {_num(test['auc'])} | {_interval(test['auc_ci95'])} "
        f"| {test.get('auc_ci_method', '-')} |",
        f"| log loss | {_num(test['log_loss'])} | - | - |",
        "",
        f"Last validation accuracy at the sites (their own splits, averaged): "
        f"{_num(metrics.get('validation_at_sites'))}. Per site: "
        f"{per_site_text(metrics['per_site'], 'accuracy')}.",
    ]


def _regression(test: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    rows = [
        f"| {title} | {_num(test[key])} | {_interval(test[f'{key}_ci95'])} "
        f"| {test[f'{key}_ci_method']} |"
        for key, title in (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"))
    ]
    sites = metrics.get("validation_at_sites")
    return [
        f"On {test['data']} ({test['rows']} rows; MAE and RMSE in the target's units):",
        "",
        "| metric | value | 95 % interval | method |",
        "|---|---|---|---|",
        *rows,
        "",
        "Last validation R² at the sites: "
        + (
            _num(sites)
            if sites is not None
            else "none (under DP the sites release no regression metrics)"
        )
        + f". Per site: {per_site_text(metrics['per_site'], 'r2')}.",
    ]


def _model_line(card: dict[str, Any]) -> str:
    model = card["model"]
    line = (
        f"{card['task']}; {model['architecture']}, {model['parameters']} "
        f"parameters, strategy {model['strategy']}."
    )
    plugin = model.get("plugin")
    if plugin:
        digest = plugin["module_sha256"] or "module not found here"
        line += f" Plug-in factory `{plugin['factory']}`, module file sha256 {digest}."
    return line


def _sites(data: dict[str, Any]) -> list[str]:
    lines = [
        "| site | rows released | rounds trained | epsilon | budget | declines "
        "| failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in data["sites"]:
        lines.append(
            f"| {s['name']} | {_num(s['rows_released'])} | {s['rounds_trained']} "
            f"| {_eps(s['epsilon'])} | {_num(s['epsilon_budget'], 3)} "
            f"| {s['declines']} | {s['failures']} |"
        )
    return lines


def _bullets(items: list[str]) -> list[str]:
    return [f"- {item}" for item in items]


def _record(record: dict[str, Any]) -> list[str]:
    names = {
        "controller": "Controller (Art. 30(1)(a))",
        "purposes": "Purposes (b)",
        "categories_of_data_subjects": "Categories of data subjects (c)",
        "categories_of_personal_data": "Categories of personal data (c)",
        "recipients": "Recipients (d)",
        "transfers_to_third_countries": "Transfers to third countries (e)",
        "retention": "Time limits for erasure (f)",
        "technical_and_organisational_measures": "Technical and organisational "
        "measures (g)",
    }
    lines = []
    for key, title in names.items():
        value = record[key]
        if isinstance(value, list):
            lines += [f"**{title}:**", "", *_bullets(value), ""]
        else:
            lines += [f"**{title}:** {value}", ""]
    return lines


def markdown(card: dict[str, Any]) -> str:
    """Render the card; placeholders stay visible as ``[OPERATOR: ...]``."""
    run, use = card["run"], card["intended_use"]
    data, privacy = card["data"], card["privacy"]
    lines = [
        "# Model card",
        "",
        f"Run `{run['folder']}`: {run['status']}, {run['rounds_completed']} of "
        f"{run['rounds_planned']} rounds. Generated {card['generated']} by fedvault; "
        "fill in every `[OPERATOR: ...]`.",
        "",
        "## Intended use and limits",
        "",
        f"- Purpose: {use['purpose']}",
        f"- Users: {use['users']}",
        f"- Out of scope: {use['out_of_scope']}",
        *_bullets(use["limits"]),
        "",
        "## Task and model",
        "",
        _model_line(card),
        "",
        "## Data",
        "",
        f"{data['rows_released']} training rows released by {len(data['sites'])} "
        f"site(s) ({data['rows_in_preprocessing']} rows in the preprocessing "
        f"summaries); time range: {data['time_range']}. Excluded sites: "
        f"{data['excluded_sites'] or 'none'}.",
        "",
        *_sites(data),
        "",
        "## Metrics",
        "",
        *_metrics(card["metrics"]),
        "",
        "## Privacy",
        "",
        privacy["in_plain_words"],
        "",
        f"- Guarantee: {privacy['level']}; mechanism: {privacy['mechanism']}; "
        f"accountant: {privacy['accountant'] or '-'}; delta: "
        f"{'-' if privacy['delta'] is None else format(privacy['delta'], 'g')}; "
        f"largest epsilon of a site: {_eps(privacy['epsilon_max'])}.",
        f"- Secure aggregation: {'on' if privacy['secure_aggregation'] else 'off'}; "
        f"client-level DP: {'on' if privacy['client_level'] else 'off'}.",
        "- Not covered: " + "; ".join(privacy["not_covered"]) + ".",
        "",
        "## Record of processing (GDPR Article 30(1))",
        "",
        *_record(card["record_of_processing"]),
    ]
    return "\n".join(lines).rstrip() + "\n"
