"""The tables and summaries the ``fedvault model`` commands print, and the
labelled inputs they read (kept apart from the commands to keep each module small).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fedvault.common.cli import OutputFormat
from fedvault.common.data import load_table
from fedvault.common.errors import DataError
from fedvault.common.image_table import PIXELS
from fedvault.server import compress as cmp
from fedvault.server import explain_images as xim
from fedvault.server import trained
from fedvault.server.image_inputs import check_kind, read_images

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def notes(lines: tuple[str, ...] | list[str]) -> None:
    """Print each line as a ``note:`` on standard error."""
    for line in lines:
        err_console.print(f"[yellow]note:[/] {line}", highlight=False)


def as_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as indented JSON on standard output."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def described(model: trained.TrainedModel, predicted: Any) -> dict[str, float]:
    """Regression: mean, min and max of the predicted values; else the count of
    each predicted class."""
    if model.regression:
        return {
            "mean": float(predicted.mean()),
            "min": float(predicted.min()),
            "max": float(predicted.max()),
        }
    counts = predicted.value_counts().to_dict()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def labelled(model: trained.TrainedModel, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and label codes (regression: standardized targets) of a labelled
    file, or of a folder per class for an image model."""
    check_kind(model, data)
    if model.image:
        images = read_images(model, data, labelled=True)
        notes(images.notes())
        try:
            y = model.prep.encode_labels(pd.Series(images.labels))
        except DataError as exc:
            raise DataError(f"{data}: {exc}") from None
        return images.pixels, y
    frame = load_table(data)
    x, imputed = trained.features(model.prep, frame, source=str(data))
    y = trained.labels(model.prep, frame, source=str(data))
    notes(imputed)
    return x, y


def labelled_frame(model: trained.TrainedModel, data: Path) -> pd.DataFrame:
    """A labelled file as a frame; for an image model, a folder per class as rows
    of pixels (:mod:`fedvault.common.image_table`) and the target."""
    check_kind(model, data)
    if not model.image:
        return load_table(data)
    images = read_images(model, data, labelled=True)
    notes(images.notes())
    return pd.DataFrame(
        {
            PIXELS: [row.tobytes() for row in images.pixels],
            model.prep.target: list(images.labels or ()),
        }
    )


_SCORE_NAMES = {"accuracy": "acc.", "auc": "AUC", "r2": "R²", "mae": "MAE"}


def compress_table(
    rows: list[cmp.Variant], scores: tuple[str, ...], *, title: str
) -> Table:
    base = rows[0]
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for col in ("bytes (x)", "gzipped (x)"):
        table.add_column(col, justify="right")
    for score in scores:
        table.add_column(_SCORE_NAMES[score], justify="right")
        table.add_column(f"Δ {_SCORE_NAMES[score]}", justify="right")
    for r in rows:
        cells = []
        for score in scores:
            value, first = getattr(r, score), getattr(base, score)
            cells += [_fmt(value), _delta(value, first)]
        table.add_row(
            r.name,
            f"{r.size:,} ({r.size / base.size:.2f})",
            f"{r.gzipped:,} ({r.gzipped / base.gzipped:.2f})",
            *cells,
        )
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _delta(value: float | None, base: float | None) -> str:
    return "-" if value is None or base is None else f"{value - base:+.4f}"


def explain_images(
    model: trained.TrainedModel,
    data: Path,
    folder: Path,
    count: int,
    output_format: OutputFormat,
) -> None:
    images = read_images(model, data, labelled=False)
    notes(images.notes())
    result = xim.explain_images(model, images, count=count)
    json_path, png_path = xim.write(result, folder)
    if output_format is OutputFormat.JSON:
        as_json(result.to_json() | {"json": str(json_path), "png": str(png_path)})
        return
    balance = ", ".join(f"{k}: {v}" for k, v in result.class_balance.items())
    shown = ", ".join(i.path for i in result.images)
    console.print(
        f"Attribution maps ({result.method}) of {len(result.images)} of the "
        f"{len(images.paths)} images of {data}: {shown}.\nClass balance of those "
        f"{len(images.paths)} images ({result.balance_of}): {balance}. The maps "
        f"describe the model on these images only.\nWrote {png_path} and "
        f"{json_path}.",
        highlight=False,
    )
