"""What ``fedvault simulate`` trains on: a table, or images, and the task and model
that fit it, all checked before anything is written.

Sources: the embedded breast-cancer table (default) or handwritten digits
(``--dataset digits``, 8x8 grey images); ``--data`` a CSV/Parquet table, an image
folder (one folder per class; PNG, JPEG or DICOM files), or a manifest (a table
with a ``path`` column of image files). Images become rows of float32 pixels
(:mod:`fedvault.common.image_table`): a DICOM header never leaves this step (only
its pixels and the folder's label are kept), and a file whose header flags
burned-in annotations is left out, as ``fedvault data import-images`` refuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import tomli_w

from fedvault.common.config import TaskChoice, TrainingConfig
from fedvault.common.data import DEFAULT_TARGET, check_target, default_dataset
from fedvault.common.data import load_table as _load_table
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.image_table import (
    PIXELS,
    ImageShape,
    image_frame,
    write_image_table,
)
from fedvault.common.images import (
    DEFAULT_SIZE,
    IMAGE_SUFFIXES,
    PATH_COLUMN,
    ImageSet,
    digits_dataset,
    read_folder,
    read_manifest,
)
from fedvault.common.models import build_run_model, infer_task
from fedvault.common.partition import validation_rows
from fedvault.common.preprocessing import merge_summaries, site_summary
from fedvault.server._site_schema import MIN_DECLARED_CLASS, site_schema

if TYPE_CHECKING:
    from fedvault.server.simulate import SimulationConfig

logger = logging.getLogger(__name__)
DEFAULT_DELTA = 1e-5

DATASETS = ("breast-cancer", "digits")
# The cnn's defaults, where a setting is not given: chosen on digits, 5 sites, IID,
# epsilon 3 (python -m benchmarks --only B11; docs/benchmarks.md, B11).
CNN_DEFAULTS: dict[str, Any] = {
    "rounds": 30,
    "batch-size": 64,
    "lr": 0.2,
    "momentum": 0.9,
    "hidden": 32,
}


@dataclass(frozen=True)
class Source:
    """The rows of a simulation, where they came from, and their image shape."""

    frame: pd.DataFrame
    name: str
    image_shape: ImageShape | None


def load_source(
    *,
    dataset: str,
    data: str,
    target: str,
    image_size: int,
    text_columns: list[str] | None = None,
) -> Source:
    """Read the simulation's rows. Raises :class:`DataError` for unreadable data
    (one bad image file is reported and left out, not fatal), :class:`ConfigError`
    for an unknown dataset or both a dataset and ``--data``."""
    if dataset and dataset not in DATASETS:
        raise ConfigError(f"dataset: unknown {dataset!r}; use one of {DATASETS}")
    if dataset and data:
        raise ConfigError("dataset: give either --dataset or --data, not both")
    size = (image_size, image_size) if image_size else DEFAULT_SIZE
    if dataset == "digits":
        return _images(digits_dataset(), "digits", DEFAULT_TARGET)
    if not data:
        return Source(default_dataset(), "embedded breast-cancer data", None)
    path = Path(data)
    if path.is_dir():
        images = read_folder(path, size=size, dicom_check=_no_burned_in, label=target)
        return _images(images, path.name, target)
    frame = _load_table(path, text_columns=text_columns or [])
    if _is_manifest(frame):
        images = read_manifest(path, label=target, size=size, dicom_check=_no_burned_in)
        return _images(images, path.stem, target)
    return Source(frame, data, None)


def _is_manifest(frame: pd.DataFrame) -> bool:
    if PATH_COLUMN not in frame.columns:
        return False
    paths = frame[PATH_COLUMN].dropna()
    return not paths.empty and Path(str(paths.iloc[0])).suffix.lower() in IMAGE_SUFFIXES


def _images(images: ImageSet, name: str, target: str) -> Source:
    for bad in images.report.bad:
        logger.warning("%s: left out %s: %s", name, bad.path, bad.reason)
    frame = image_frame(images, images.label)
    if images.label != target:
        frame = frame.rename(columns={images.label: target})
    return Source(frame, name, images.shape)


def _no_burned_in(dataset: Any) -> None:
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DataError("burned-in annotations (BurnedInAnnotation = YES)")


def prepare_source(
    options: Any, training: TrainingConfig, *, text_columns: list[str]
) -> tuple[pd.DataFrame, TrainingConfig, ImageShape | None]:
    """The rows of a simulation from its options (``--dataset``, ``--data``), the
    training settings with the task settled, and the image shape; the run's model
    is built once for them first (:func:`check_model`).

    Raises :class:`DataError` or :class:`ConfigError`, before anything is written.
    """
    source = load_source(
        dataset=options.dataset,
        data=options.data,
        target=options.target,
        image_size=options.image_size,
        text_columns=text_columns,
    )
    frame, training = settle_task(source, training, target=options.target)
    shape = source.image_shape
    for note in check_model(frame, training, target=options.target, image_shape=shape):
        # a change to the user's model: shown (warnings reach the terminal)
        logger.warning("model fitted for DP-SGD: %s", note)
    return frame, training, shape


def write_rows(frame: pd.DataFrame, path: Path, shape: ImageShape | None) -> None:
    """A site's (or the test split's) rows as Parquet; images with their shape."""
    if shape is None:
        frame.to_parquet(path, index=False)
    else:
        write_image_table(frame, shape, path)


def check_device(device: str, gpu_fraction: float) -> None:
    """``--device cuda`` or a GPU fraction on a machine without CUDA: every site
    would decline; refused before anything starts. Raises :class:`ConfigError`."""
    import torch

    if (device == "cuda" or gpu_fraction > 0) and not torch.cuda.is_available():
        raise ConfigError(
            "device: CUDA was asked for (--device cuda or --gpu-fraction) but this "
            "machine has no CUDA device; use --device auto or cpu"
        )


def settle_task(
    source: Source, training: TrainingConfig, *, target: str
) -> tuple[pd.DataFrame, TrainingConfig]:
    """Check the target and resolve ``task = auto`` from it (images: classification).

    Raises :class:`DataError` for a missing or unusable target.
    """
    frame = source.frame
    if target not in frame.columns:
        check_target(frame, target, source=source.name)  # raises, naming columns
    task = training.task
    if task == "auto":
        task = "classification" if source.image_shape else infer_task(frame[target])
    if task == "classification":
        frame = check_target(frame, target, source=source.name)
    else:
        values = pd.to_numeric(frame[target], errors="coerce")
        if values.isna().any():
            raise DataError(
                f"{source.name}: regression target {target!r} holds missing or "
                "non-numeric values"
            )
        frame = frame.assign(**{target: values})
    settled: TaskChoice = "regression" if task == "regression" else "classification"
    loss = training.regression_loss
    if settled == "classification" and loss != "mse":
        # --task auto found a class label: the regression loss is unused (an
        # explicit --task classification refuses it, TrainingConfig)
        logger.info("regression-loss %s unused: %r holds class labels", loss, target)
        loss = "mse"
    return frame, replace(training, task=settled, regression_loss=loss)


def check_model(
    frame: pd.DataFrame,
    training: TrainingConfig,
    *,
    target: str,
    image_shape: ImageShape | None,
) -> tuple[str, ...]:
    """Build the run's model for this data as the coordinator will, before Flower
    starts: a model that cannot be built or trained with DP-SGD is refused here,
    in one line naming the layer. Returns what was changed to fit DP-SGD.

    Raises :class:`ConfigError`.
    """
    summary = site_summary(
        frame,
        target,
        regression=training.task == "regression",
        image_shape=image_shape,
    )
    prep = merge_summaries([summary], target)
    try:
        _, notes = build_run_model(
            training.model, prep, hidden=training.hidden, dp=training.dp
        )
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    return notes


def schema_of(
    options: Any,
    sites: list[tuple[str, pd.DataFrame | Path]],
    shape: ImageShape | None,
    work: Path,
    *,
    regression: bool = False,
) -> dict[str, str]:
    """A simulated data site's schema contract (:func:`site_schema`): for a
    regression on the embedded data the published ranges of its features and its
    target; none for a regression on user data (its sites bound every value, the
    target's too, with asinh). For images only their label classes
    held by at least MIN_DECLARED_CLASS rows, declared so that the sites' noisy
    summaries release their counts (no bounds: no features)."""
    if shape is None:
        return site_schema(options, sites, work, regression=regression)
    if regression:
        return {}
    path = work / "schema.toml"
    if not path.exists():
        frame = pd.concat([part for _, part in sites if not isinstance(part, Path)])
        counts = frame[options.target].astype(str).value_counts()
        labels = sorted(str(k) for k, v in counts.items() if v >= MIN_DECLARED_CLASS)
        target = {"type": "category", "role": "target", "categories": labels}
        pixels = {"type": "text", "role": "feature", "keep": True}
        columns = {PIXELS: pixels, options.target: target}
        doc = {"dataset": {"name": "images"}, "columns": columns}
        path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return {"schema": str(path)}


def warn_weak_delta(cfg: SimulationConfig, rows: tuple[int, ...]) -> None:
    """Warn of a ``--delta`` given explicitly that is below 1/n (else refused) but
    above 1/(10 n) for the largest site's n training rows: the usual bound, and
    the default, since a guarantee at delta allows revealing one row in 1/delta."""
    t = cfg.training
    if not (cfg.delta_given and t.dp and rows):
        return
    n = max(rows) - validation_rows(max(rows))
    if 0.1 / n < t.delta < 1 / n:
        logger.warning(
            "delta: %g is a weak delta for the largest site (%d training rows): "
            "above 1/(10 n) = %.3g, the usual bound and the default; a smaller "
            "--delta gives a stronger guarantee",
            t.delta, n, 0.1 / n,
        )  # fmt: skip


def with_delta(cfg: SimulationConfig, largest_site: int) -> SimulationConfig:
    """Default delta is 1e-5, lowered below 1/(10 n) for sites with n >= 10,000 rows;
    a delta given explicitly must stay below 1/n of every site."""
    training = cfg.training
    if cfg.delta_given:
        if training.dp and training.delta >= 1 / largest_site:
            raise ConfigError(
                f"delta: {training.delta:g} is not below 1/n = {1 / largest_site:.3g} "
                f"for the largest site ({largest_site} rows)"
            )
        return cfg
    delta = min(DEFAULT_DELTA, 0.1 / largest_site)
    return replace(cfg, training=replace(training, delta=delta), delta_given=True)
