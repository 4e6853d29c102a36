"""``fedvault model``: use what a federation trained (predict, export, compress,
explain, card). Every command takes a run folder (``fedvault simulate --out``,
``fedvault server start``) or a model file."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    errors_as_exit,
)
from fedvault.common.data import load_table
from fedvault.common.errors import DataError
from fedvault.server import compress as cmp
from fedvault.server import explain as xpl
from fedvault.server import export as exp
from fedvault.server import lineage as lin
from fedvault.server import model_card as mc
from fedvault.server import model_views as views
from fedvault.server import predict as pred
from fedvault.server import trained
from fedvault.server.image_inputs import check_kind, read_images

console = views.console

model_app = command_group(
    "model", "Use a trained model: predict, export, compress, explain, model card."
)

RunArgument = Annotated[
    Path, typer.Argument(help="Run folder (holding model.pt) or a model file.")
]


_notes = views.notes
_json = views.as_json


@model_app.command("predict")
@errors_as_exit(os_errors=True)
def predict(
    run: RunArgument,
    data: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file of records; for an image model a folder of "
            "images (root/<label>/*.png|jpg|dcm, or flat)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write predictions here (.csv or .parquet); default: "
            "CSV on standard output."
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Refuse categories not seen in training (default: "
            "encode them as none of the known ones, with a note)."
        ),
    ] = False,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """One row per record: the predicted class and each class's probability (a
    regression run: the predicted value, in the target's units). An image model
    writes one row per image file: its path, then the prediction.

    The run's own preprocessing is applied first; missing values are imputed as in
    training. A file missing a column or holding text where numbers are expected
    is refused with one line naming the columns."""
    if out is not None:
        pred.check_output(out)
    model = trained.load(run)
    result = pred.predict_file(model, data, strict=strict)
    _notes(result.notes)
    if out is None:
        sys.stdout.write(result.table.to_csv(index=False))
        return
    pred.write_table(result.table, out)
    described = views.described(model, result.table[pred.PREDICTED])
    if output_format is OutputFormat.JSON:
        _json(
            {
                "model": str(model.path),
                "data": str(data),
                "out": str(out),
                "rows": len(result.table),
                "predicted": described,
                "notes": list(result.notes),
            }
        )
        return
    shares = ", ".join(f"{k}: {v:.6g}" for k, v in described.items())
    unit = "images" if model.image else "rows"
    console.print(
        f"Predicted {len(result.table)} {unit} of {data} with {model.path} "
        f"(round {model.rounds_completed}) -> {out} ({shares})",
        highlight=False,
    )


@model_app.command("export")
@errors_as_exit(os_errors=True)
def export(
    run: RunArgument,
    export_format: Annotated[
        exp.ExportFormat, typer.Option("--format", help="onnx or torchscript.")
    ] = exp.ExportFormat.ONNX,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The exported file; default: next to the model file "
            "(model.onnx, model.torchscript.pt)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Check the export on up to 256 rows of this file, or images of "
            "this folder for an image model (default: rows drawn from the run's "
            "statistics; random images)."
        ),
    ] = None,
) -> None:
    """Write the model with its preprocessing as ONNX or TorchScript, plus a
    sidecar JSON (input columns, category codes, classes), after checking that
    the exported file predicts what PyTorch predicts (within 1e-5)."""
    fmt = export_format
    model = trained.load(run)
    target = out or model.path.parent / f"model{exp.SUFFIXES[fmt]}"
    _check_writable(target)
    sample: Any = None
    name = f"rows of {data}"
    if data is not None:
        check_kind(model, data)
        if model.image:
            images = read_images(model, data, labelled=False)
            _notes(images.notes())
            sample, name = images.pixels, f"images of {data}"
        else:
            sample = load_table(data)
    result = exp.export(model, fmt, target, sample=sample, sample_name=name)
    runtime = "onnxruntime" if fmt is exp.ExportFormat.ONNX else "torch.jit.load"
    what = (
        "value difference, in standard deviations of the target"
        if model.regression
        else "probability difference"
    )
    console.print(
        f"Exported {result.path} ({fmt}) and {result.sidecar.name} (inputs, "
        f"outputs, how to encode them).\nCheck ({runtime}) on "
        f"{result.rows_checked} {result.sample}: max |{what}| vs PyTorch = "
        f"{result.max_abs_diff:.2e} (tolerance {exp.TOLERANCE:g}).",
        highlight=False,
    )


def _check_writable(out: Path) -> None:
    if out.is_dir():
        raise DataError(f"{out}: is a folder")
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {out.parent} does not exist")


@model_app.command("compress")
@errors_as_exit(os_errors=True)
def compress(
    run: RunArgument,
    quantize: Annotated[
        str, typer.Option(help="int8 (dynamic quantization of Linear layers) or none.")
    ] = "int8",
    prune: Annotated[
        float,
        typer.Option(help="Share of each layer's smallest weights to set to zero."),
    ] = 0.0,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled CSV or Parquet file (an image model: a folder per "
            "class): accuracy and AUC (regression: R² and MAE) of every variant."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The compressed model file; default: "
            "model.compressed.pt next to the model file."
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Quantize (int8) and/or prune the model with PyTorch's own tools; one table of
    size before/after and, on a labelled file, the accuracy and AUC change."""
    cmp.check_settings(quantize, prune)
    model = trained.load(run)
    cmp.check_source(model)
    target = out or model.path.parent / "model.compressed.pt"
    _check_writable(target)
    labelled = None if data is None else views.labelled(model, data)
    smaller, rows = cmp.compress(
        model, quantize=quantize, prune=prune, labelled=labelled
    )
    cmp.save(model, smaller, target, quantize=quantize, prune=prune)
    if model.image and quantize == "int8":
        _notes(
            [
                "int8 dynamic quantization applies to Linear layers; the "
                "convolutions stay float32"
            ]
        )
    unit = "images" if model.image else "rows"
    on = None if labelled is None else f"{len(labelled[1])} labelled {unit} of {data}"
    if output_format is OutputFormat.JSON:
        _json(
            {
                "out": str(target),
                "evaluated_on": on,
                "variants": [dataclasses.asdict(r) for r in rows],
            }
        )
        return
    scores = ("r2", "mae") if model.regression else ("accuracy", "auc")
    console.print(views.compress_table(rows, scores, title=f"{model.path} -> {target}"))
    names = "R² and MAE" if model.regression else "Accuracy and AUC"
    console.print(
        f"{names} on {on}."
        if on
        else "No --data: sizes only (give a labelled file for the accuracy change).",
        highlight=False,
    )


@model_app.command("explain")
@errors_as_exit(os_errors=True)
def explain(
    run: RunArgument,
    data: Annotated[
        Path,
        typer.Argument(
            help="Labelled CSV or Parquet file (with the target); for an image "
            "model a folder of images (per class, or flat)."
        ),
    ],
    metric: Annotated[
        xpl.Metric | None,
        typer.Option(
            help="Score whose drop is measured (default: accuracy; regression: r2)."
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Shuffles per column.")] = 10,
    top: Annotated[
        int,
        typer.Option(help="Columns shown in the table and chart; images explained."),
    ] = 15,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the JSON and PNG; default: explain/ in the run "
            "folder (next to the model file)."
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Global feature importance: permutation importance of every input column on
    a labelled file, as a ranked table, a PNG bar chart and JSON. An image model:
    attribution maps (Integrated Gradients) of a few images of a folder, as a PNG
    grid and JSON, with the class balance of the images they were computed on."""
    model = trained.load(run)
    folder = out or model.path.parent / "explain"
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: exists and is not a folder")
    check_kind(model, data)
    if model.image:
        views.explain_images(model, data, folder, min(top, 6), output_format)
        return
    frame = load_table(data)
    result = xpl.explain(model, frame, source=str(data), metric=metric, repeats=repeats)
    json_path, png_path = xpl.write(result, folder, top=top)
    if output_format is OutputFormat.JSON:
        _json(result.to_json() | {"json": str(json_path), "png": str(png_path)})
        return
    change = "rise" if result.metric is xpl.Metric.MAE else "drop"
    table = Table(
        title=f"Permutation importance ({result.metric} {change}, {result.repeats} "
        f"shuffles) on {result.rows} labelled rows of {data}"
    )
    for col in ("rank", "column", "importance", "± sd"):
        table.add_column(col, justify="left" if col == "column" else "right")
    for rank, item in enumerate(result.columns[:top], start=1):
        table.add_row(str(rank), item.column, f"{item.mean:+.4f}", f"{item.std:.4f}")
    console.print(table)
    console.print(
        f"Baseline {result.metric} {result.baseline:.4f} on that file. Computed on "
        f"{data} only: it describes the model there, not the sites' data. "
        f"Wrote {json_path} and {png_path}.",
        highlight=False,
    )


@model_app.command("card")
@errors_as_exit(os_errors=True)
def card(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled test file (an image model: a folder per class) for "
            "the metrics with 95% intervals (default: keep those of the card "
            "already there)."
        ),
    ] = None,
) -> None:
    """(Re)write model_card.md and model_card.json in a run folder: the model card
    and a GDPR Art. 30-style record of processing, with [OPERATOR: ...]
    placeholders to fill in. Runs write it themselves at the end."""
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    test = None
    if data is not None:
        model = trained.load(run)
        test = mc.test_metrics(model, views.labelled_frame(model, data), str(data))
    elif (run / mc.CARD_JSON).is_file():
        test = mc.previous_test_metrics(run)
    mc.write(run, mc.build(run, test))
    console.print(
        f"Wrote {run / mc.CARD_MD} and {run / mc.CARD_JSON}.", highlight=False
    )


@model_app.command("lineage")
@errors_as_exit(os_errors=True)
def lineage_(run: RunArgument, output_format: FormatOption = OutputFormat.TEXT) -> None:
    """The chain of model versions behind a model, newest first: each file's
    version and SHA-256, and whether the recorded ancestor is still where it was
    (``verified``), changed since, or missing."""
    links = lin.chain(run)
    if output_format is OutputFormat.JSON:
        _json({"models": [link.as_json() for link in links]})
        return
    table = Table(title="Model lineage (newest first)")
    for column in ("version", "sha256", "file", "status"):
        table.add_column(column)
    for link in links:
        table.add_row(str(link.version), link.sha256[:16], link.path, link.status)
    console.print(table)
