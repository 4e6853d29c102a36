"""The model card and record of processing of a run (``model_card.json`` and
``model_card.md`` in the run folder), filled from what the run recorded.

What the run knows is filled in: the sites and the rows they released, the task
and the model, test-split metrics with 95 % confidence intervals (Wilson for
accuracy, Hanley-McNeil for a binary AUC), the privacy guarantee in plain words.
What only the operator knows (controller, purposes, data subjects, retention,
transfers, intended use) is a placeholder starting with ``[OPERATOR:``, in a GDPR
Article 30(1)-style record of processing.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedvault.common.data import load_table
from fedvault.common.errors import DataError, FedVaultError
from fedvault.common.files import atomic_write
from fedvault.common.image_table import PIXELS, image_shape_of
from fedvault.common.model_zoo import InputSpec, describe_small_cnn
from fedvault.common.preprocessing import Preprocessing
from fedvault.server.central_eval import held_out_set
from fedvault.server.model_card_metrics import (
    auc_interval,
    bootstrap_interval,
    test_metrics,
    wilson,
)
from fedvault.server.model_card_text import markdown
from fedvault.server.rundir import PRIVACY_FILE, SUMMARY_FILE
from fedvault.server.site_validation import last_by_site
from fedvault.server.trained import TrainedModel, load

__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "auc_interval",
    "bootstrap_interval",
    "build",
    "test_metrics",
    "wilson",
    "write",
]

logger = logging.getLogger(__name__)

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
OPERATOR = "[OPERATOR: {}]"


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path.parent}: no {path.name}; not a finished fedvault run")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    return data


def _sites(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "rows_released": s.get("examples"),
            "rounds_trained": s.get("rounds_trained"),
            "epsilon": s.get("epsilon_spent"),
            "epsilon_budget": s.get("epsilon_budget"),
            "declines": len(s.get("declines", [])),
            "failures": len(s.get("failures", [])),
        }
        for name, s in summary.get("sites", {}).items()
    ]


def _privacy(summary: dict[str, Any], privacy: dict[str, Any]) -> dict[str, Any]:
    sites = privacy.get("sites", {})
    spent = [s["epsilon_spent"] for s in sites.values() if s.get("epsilon_spent")]
    dp = privacy.get("mechanism", "none") != "none"
    client = privacy.get("client_level_dp")
    participation = "the participation of a whole site" + (
        "" if client else " (no client-level DP in this run)"
    )
    if dp:  # every other release is noised and in epsilon (privacy.json lists them)
        not_covered = [participation, str(privacy.get("not_covered") or "")]
    else:
        not_covered = [
            "the training records: this run used no DP (--no-dp)",
            "the per-column summary counts each site sent for federated "
            "preprocessing (not noised)",
            "each site's evaluation metrics (not noised)",
            participation,
        ]
    # Each site accounts at its own delta: the card states the largest (weakest).
    deltas = [s["delta"] for s in sites.values() if s.get("delta") is not None]
    delta = privacy.get("delta") or (max(deltas) if deltas else None)
    return {
        "level": privacy.get("guarantee"),
        "mechanism": privacy.get("mechanism"),
        "accountant": privacy.get("accountant"),
        "delta": delta,
        "epsilon_max": max(spent) if spent else None,
        "epsilon_per_site": {n: s.get("epsilon_spent") for n, s in sites.items()},
        "client_level": client,
        "secure_aggregation": bool(privacy.get("secure_aggregation")),
        "not_covered": not_covered,
        "figures_source": privacy.get("site_figures_source"),
        "in_plain_words": _plain_words(dp, spent, delta, client),
    }


def _plain_words(dp: bool, spent: list[float], delta: float | None, client: Any) -> str:
    if not dp:
        return (
            "No differential privacy: nothing bounds what the model reveals about "
            "any one record."
        )
    # A bound is rounded up (2.99797 -> 2.998): the sentence must not claim more
    # than the accountant gives (tables round down, to compare with a budget).
    worst = math.ceil(max(spent, default=0.0) * 1000 - 1e-9) / 1000
    text = (
        f"For any one record at any site, whether or not it was used changes the "
        f"probability of anything this training released by at most a factor "
        f"e^{worst:g} (about {math.exp(worst):.1f}x), except with probability "
        f"{'delta (each site its own)' if delta is None else format(delta, 'g')}. "
        "This protects individual records, not the fact that a site took part."
    )
    if client:
        text += (
            " Client-level DP also bounds what the model reveals about a whole site."
        )
    return text


def build(run_dir: Path, test: dict[str, Any] | None) -> dict[str, Any]:
    """The card of the run in ``run_dir`` (``test``: :func:`test_metrics`).

    Raises:
        DataError: the folder holds no finished run.
    """
    summary = _json(run_dir / SUMMARY_FILE)
    privacy = _json(run_dir / PRIVACY_FILE)
    trained = load(run_dir)
    prep, config = trained.prep, trained.config
    sites = _sites(summary)
    task = _task(prep)
    final = summary.get("final") or {}
    return {
        "card": "fedvault model card and record of processing",
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {
            "folder": str(run_dir.resolve()),
            "status": summary.get("status"),
            "stop_reason": summary.get("stop_reason"),
            "rounds_completed": summary.get("rounds_completed"),
            "rounds_planned": summary.get("rounds_planned"),
        },
        "intended_use": {
            "purpose": OPERATOR.format("what decisions the model supports"),
            "users": OPERATOR.format("who uses its outputs"),
            "out_of_scope": OPERATOR.format("uses it must not be put to"),
            "limits": _limits(prep.rows, len(sites), summary),
        },
        "task": task,
        "model": {
            "architecture": _architecture(trained),
            "input": _input(prep),
            "plugin": _plugin(config.model),
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "strategy": config.strategy,
            "settings": config.to_run_config(),
        },
        "data": {
            "sites": sites,
            "rows_released": sum(s["rows_released"] or 0 for s in sites),
            "rows_in_preprocessing": prep.rows,
            "excluded_sites": summary.get("excluded_sites", {}),
            "columns": (
                {"pixels": "x".join(map(str, prep.image_shape))}
                if prep.image_shape
                else {
                    "numeric": list(prep.numeric),
                    "categorical": list(prep.categorical),
                }
            ),
            "target": prep.target,
            "time_range": OPERATOR.format("period the records cover (not recorded)"),
        },
        "metrics": {
            "test_split": test,
            "validation_at_sites": final.get(
                "val_r2" if prep.regression else "val_accuracy"
            ),
            "validation_metric": "R²" if prep.regression else "accuracy",
            "per_site": last_by_site(summary.get("history") or [])
            or "not recorded (a run from before fedvault kept them per site)",
        },
        "privacy": _privacy(summary, privacy),
        "record_of_processing": _record(prep.target, _data_items(prep), sites, privacy),
    }


def _task(prep: Preprocessing) -> str:
    if prep.regression:
        return (
            f"regression of {prep.target!r} (MSE on the target standardized with "
            f"mean {prep.target_mean:.4g} and scale {prep.target_std:.4g})"
        )
    kind = "binary" if prep.num_classes == 2 else "multi-class"
    what = "image classification" if prep.image_shape else "classification"
    return f"{kind} {what} of {prep.target!r} ({', '.join(prep.labels)})"


def _architecture(trained: TrainedModel) -> str:
    """The model in words: built-ins by their layers, plug-ins by their name."""
    prep, config = trained.prep, trained.config
    out = 1 if prep.num_classes <= 2 else prep.num_classes
    if prep.image_shape:
        shape = "x".join(map(str, prep.image_shape))
        if config.model == "cnn":
            spec = InputSpec.image(*prep.image_shape)
            what = f"small CNN ({describe_small_cnn(spec, config.hidden)})"
        elif config.model == "resnet18":
            what = "ResNet-18 (torchvision, GroupNorm, random initialisation)"
        else:
            what = f"plug-in {config.model}"
        return f"{what}, input {shape} (channels x height x width), {out} output(s)"
    if config.model == "mlp":
        return f"MLP {prep.num_features}-{config.hidden}-{out} (ReLU)"
    if config.model == "logreg":
        return f"logistic regression {prep.num_features}-{out}"
    return f"plug-in {config.model}, {prep.num_features} inputs, {out} output(s)"


def _input(prep: Preprocessing) -> dict[str, Any]:
    if prep.image_shape:
        c, h, w = prep.image_shape
        return {
            "kind": "image",
            "channels": c,
            "height": h,
            "width": w,
            "pixels": "float32 in [0, 1], resized to the run's image size",
        }
    return {"kind": "table", "features": prep.num_features}


def _plugin(name: str) -> dict[str, Any] | None:
    """A plug-in's factory name and the sha256 of its module file here (the hash a
    site's policy pins), or None for a built-in model."""
    from fedvault.common.model_zoo import is_plugin, plugin_sha256

    if not is_plugin(name):
        return None
    try:
        digest: str | None = plugin_sha256(name)
    except FedVaultError:
        digest = None
    return {"factory": name, "module_sha256": digest}


def _data_items(prep: Preprocessing) -> list[str]:
    if prep.image_shape:
        return ["images (pixels only: no DICOM header value, no file name)"]
    return ["the columns " + ", ".join(prep.feature_names)]


def _limits(rows: int, sites: int, summary: dict[str, Any]) -> list[str]:
    limits = [
        f"Trained on {rows} rows from {sites} site(s); it reflects their "
        "populations and may not transfer to others.",
        "Probabilities are not calibrated; DP noise lowers accuracy.",
        OPERATOR.format("known failure modes, groups it was not checked on"),
    ]
    if summary.get("status") != "completed":
        limits.insert(0, f"The run stopped early: {summary.get('stop_reason')}")
    return limits


def _record(
    target: str,
    features: list[str],
    sites: list[dict[str, Any]],
    privacy: dict[str, Any],
) -> dict[str, Any]:
    measures = [
        "records never leave a site: only model updates, metrics and per-column "
        "summary counts do",
        f"training: {privacy.get('mechanism')}"
        + (
            f", accountant {privacy['accountant']}" if privacy.get("accountant") else ""
        ),
        "secure aggregation (SecAgg+): "
        + ("on" if privacy.get("secure_aggregation") else "off"),
        "client-level DP: " + ("on" if privacy.get("client_level_dp") else "off"),
        "a privacy ledger and lifetime budget per site, enforced by the site",
        OPERATOR.format(
            "transport (TLS, site authentication), access control, "
            "encryption at rest, staff measures"
        ),
    ]
    return {
        "controller": OPERATOR.format(
            "name and contact of the controller(s), representative, DPO"
        ),
        "purposes": OPERATOR.format(f"purpose of training a model of {target!r}"),
        "categories_of_data_subjects": OPERATOR.format("e.g. patients of the sites"),
        "categories_of_personal_data": [
            *features,
            "derived from them: model updates and per-column summary counts",
        ],
        "recipients": [
            "the coordinator (updates, metrics, summary counts)",
            *(f"{s['name']} (the global model)" for s in sites),
            OPERATOR.format("users of the model"),
        ],
        "transfers_to_third_countries": OPERATOR.format("none, or which and why"),
        "retention": OPERATOR.format("how long run folders and models are kept"),
        "technical_and_organisational_measures": measures,
    }


def previous_test_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The test metrics of the card already in ``run_dir`` (None if it has none)."""
    card = _json(run_dir / CARD_JSON)
    test: dict[str, Any] | None = (card.get("metrics") or {}).get("test_split")
    return test


def write(run_dir: Path, card: dict[str, Any]) -> None:
    """Write ``model_card.json`` and ``model_card.md`` into the run folder."""
    atomic_write(run_dir / CARD_JSON, (json.dumps(card, indent=2) + "\n").encode())
    atomic_write(run_dir / CARD_MD, markdown(card).encode())


def write_for_run(run_dir: Path, *, test_data: Path | None) -> None:
    """Write the card at the end of a run. A card that cannot be written is logged,
    never a failed run: the model and reports are already saved."""
    try:
        test = None
        if test_data is not None:
            model = load(run_dir)
            test = test_metrics(
                model,
                _test_frame(model, test_data),
                f"the coordinator's test data ({test_data.name})",
            )
        write(run_dir, build(run_dir, test))
    except (FedVaultError, OSError, ValueError) as exc:
        logger.warning("model card not written: %s", exc)


def _test_frame(model: TrainedModel, path: Path) -> pd.DataFrame:
    """The coordinator's test data as a labelled frame: a table, or for an image
    run a folder per class or a manifest read as the run read it (rows of float32
    pixels, :mod:`fedvault.common.image_table`)."""
    shape = model.prep.image_shape
    if not shape or image_shape_of(path) is not None:
        return load_table(path)
    held = held_out_set(path, model.prep)
    if held is None:  # only for no path
        raise DataError(f"{path}: no test images")
    images, labels = held
    names = np.asarray(model.prep.labels, dtype=object)[labels.numpy()]
    return pd.DataFrame(
        {
            PIXELS: [row.numpy().astype(np.float32).tobytes() for row in images],
            model.prep.target: list(names),
        }
    )
