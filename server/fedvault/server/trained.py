"""A trained model as the ``fedvault model`` commands see it: read from a run folder
or a model file, checked, and fed new records through the run's own preprocessing.

A model file (``model.pt``, written by the coordinator after every round) holds the
state dict, the federated preprocessing (JSON) and the run's training settings. It
is read with ``torch.load(weights_only=True)``: a model file from elsewhere can hold
tensors and plain values only, never code. When it sits in a run folder it must be
that run's model: its preprocessing and settings must equal the folder's
``preprocessing.json`` and ``summary.json``.

New records must fit the model's schema (:func:`features`): every column the model
was trained on is present, numeric columns hold numbers. Missing values are imputed
as in training (global mean, global mode); a category not seen in training is
encoded as none of the known categories (all its one-hot columns 0), which is what
the sites' own preprocessing does, and is reported, or refused with ``strict``.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import DataError
from fedvault.common.models import build_run_model
from fedvault.common.preprocessing import Preprocessing
from fedvault.server.rundir import MODEL_FILE, PREPROCESSING_FILE, SUMMARY_FILE

_BUNDLE_KEYS = ("state_dict", "preprocessing", "config")
_UNREADABLE = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


@dataclass(frozen=True)
class TrainedModel:
    """A model ready to use: the network (eval mode), its preprocessing and the
    settings it was trained with; ``run_dir`` is None for a lone model file;
    ``compression`` says how a compressed model file was made (None: as trained)."""

    model: nn.Module
    prep: Preprocessing
    config: TrainingConfig
    path: Path
    run_dir: Path | None
    rounds_completed: int
    compression: dict[str, Any] | None = field(default=None)

    @property
    def image(self) -> bool:
        """Whether the model reads images (its preprocessing has an image shape)."""
        return bool(self.prep.image_shape)

    @property
    def regression(self) -> bool:
        return self.prep.regression

    def outputs(self, x: np.ndarray, *, batch: int = 1024) -> torch.Tensor:
        """The network's raw outputs for preprocessed inputs, ``batch`` at a time."""
        with torch.no_grad():
            chunks = [
                self.model(torch.from_numpy(x[i : i + batch]))
                for i in range(0, len(x), batch)
            ]
        return torch.cat(chunks) if chunks else torch.zeros(0, 1)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for preprocessed features."""
        from fedvault.common.models import predict_proba

        proba = predict_proba(self.outputs(x), self.prep.num_classes)
        out: np.ndarray = np.asarray(proba.numpy(), dtype=np.float64)
        out /= out.sum(axis=1, keepdims=True)  # rows sum to 1 in float64
        return out

    def values(self, x: np.ndarray) -> np.ndarray:
        """Regression: the predicted target in its own units, shape (n,) (the
        network predicts the standardized target; this undoes it)."""
        raw = np.asarray(self.outputs(x)[:, 0].numpy(), dtype=np.float64)
        return raw * self.prep.target_std + self.prep.target_mean


def model_file(path: Path) -> tuple[Path, Path | None]:
    """The model file named by ``path`` (a run folder or a file) and its run folder.

    Raises:
        DataError: ``path`` does not exist, or the folder holds no model file.
    """
    if path.is_dir():
        file = path / MODEL_FILE
        if not file.is_file():
            raise DataError(f"{path}: no {MODEL_FILE} here; not a fedvault run folder")
        return file, path
    if path.is_file():
        run_dir = path.parent if path.name == MODEL_FILE else None
        return path, run_dir
    raise DataError(f"{path}: no such run folder or model file")


def load(path: Path) -> TrainedModel:
    """Load the model of a run folder or a model file.

    Raises:
        DataError: missing, unreadable or corrupted file, a file that is not a
            fedvault model, weights that do not fit the recorded architecture, or a
            model file that belongs to another run than its folder.
    """
    file, run_dir = model_file(path)
    bundle = read_bundle(file)
    try:
        prep = Preprocessing.from_json(str(bundle["preprocessing"]))
        config = TrainingConfig.from_run_config(dict(bundle["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{file}: damaged model file ({exc})") from None
    if run_dir is not None:
        _check_same_run(file, run_dir, bundle)
    compression = bundle.get("compression")
    model = _network(file, config, prep, compression)
    try:
        from fedvault.server.compress import quiet_quantized

        with quiet_quantized():
            if (compression or {}).get("format") == "sparse-int8":
                from fedvault.server import sparse

                sparse.decode(model, bundle["sparse"])
            else:
                model.load_state_dict(bundle["state_dict"])
    except (RuntimeError, TypeError, KeyError, DataError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(
            f"{file}: its weights do not fit a {config.model} with "
            f"{prep.num_features} features and {prep.num_classes} classes ({first})"
        ) from None
    return TrainedModel(
        model=model.eval(),
        prep=prep,
        config=config,
        path=file,
        run_dir=run_dir,
        rounds_completed=int(bundle.get("rounds_completed", 0)),
        compression=None if compression is None else dict(compression),
    )


def read_bundle(file: Path) -> dict[str, Any]:
    """The raw contents of a model file (tensors and plain values only).

    Raises:
        DataError: the file is unreadable, corrupted, or not a fedvault model file.
    """
    from fedvault.server.compress import quiet_quantized

    try:
        with quiet_quantized():
            bundle = torch.load(file, map_location="cpu", weights_only=True)
    except _UNREADABLE:
        raise DataError(
            f"{file}: not a readable model file (corrupted or truncated?)"
        ) from None
    if not isinstance(bundle, dict) or any(k not in bundle for k in _BUNDLE_KEYS):
        raise DataError(
            f"{file}: not a fedvault model file (expected the keys "
            f"{', '.join(_BUNDLE_KEYS)})"
        )
    return bundle


def _check_same_run(file: Path, run_dir: Path, bundle: dict[str, Any]) -> None:
    prep_file = run_dir / PREPROCESSING_FILE
    if prep_file.is_file():
        recorded = _json(prep_file)
        if recorded != json.loads(str(bundle["preprocessing"])):
            raise DataError(
                f"{file} is not the model of the run in {run_dir}: its "
                f"preprocessing differs from {PREPROCESSING_FILE}"
            )
    summary_file = run_dir / SUMMARY_FILE
    if summary_file.is_file():
        config = _json(summary_file).get("config")
        if config is not None and config != dict(bundle["config"]):
            raise DataError(
                f"{file} is not the model of the run in {run_dir}: its "
                f"settings differ from {SUMMARY_FILE}"
            )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


def _network(
    file: Path,
    config: TrainingConfig,
    prep: Preprocessing,
    compression: dict[str, Any] | None,
) -> nn.Module:
    try:
        model, _ = build_run_model(
            config.model, prep, hidden=config.hidden, dp=config.dp
        )
    except ValueError as exc:
        raise DataError(f"{file}: cannot rebuild the model ({exc})") from None
    if compression is not None and compression.get("quantize") == "int8":
        from fedvault.server.compress import quantize_int8

        model = quantize_int8(model)
    return model


def features(
    prep: Preprocessing, frame: pd.DataFrame, *, source: str, strict: bool = False
) -> tuple[np.ndarray, list[str]]:
    """The model's input for ``frame`` and notes on what was imputed or unseen.

    Raises:
        DataError: one line naming every column that does not fit: missing, not
            numbers where numbers are expected, or (with ``strict``) holding
            categories not seen in training.
    """
    problems, notes = [], []
    missing = [c for c in (*prep.numeric, *prep.categorical) if c not in frame]
    if missing:
        problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
    for name, mean in zip(prep.numeric, prep.means, strict=True):
        if name not in frame:
            continue
        column = frame[name]
        parsed = pd.to_numeric(column, errors="coerce")
        bad = column[parsed.isna() & column.notna()]
        if len(bad):
            problems.append(
                f"column {name!r}: {len(bad)} value(s) are not numbers "
                f"(e.g. {str(bad.iloc[0])!r})"
            )
        if n := int(column.isna().sum()):
            notes.append(f"column {name!r}: {n} missing value(s) set to {mean:.4g}")
    for name, vocab, mode in zip(prep.categorical, prep.vocab, prep.modes, strict=True):
        if name not in frame:
            continue
        column = frame[name].dropna().astype(str)
        unseen = sorted(set(column) - set(vocab))
        if unseen:
            text = (
                f"column {name!r}: {int((~column.isin(vocab)).sum())} value(s) in "
                f"categories not seen in training ({', '.join(map(repr, unseen[:3]))})"
            )
            if strict:
                problems.append(text)
            else:
                notes.append(text + ", encoded as none of the known categories")
        if n := int(frame[name].isna().sum()):
            notes.append(f"column {name!r}: {n} missing value(s) set to {mode!r}")
    if problems:
        raise DataError(f"{source} does not fit the model: " + "; ".join(problems))
    return prep.transform(frame), notes


def target_values(
    prep: Preprocessing, frame: pd.DataFrame, *, source: str
) -> np.ndarray:
    """A regression run's target column of a labelled file, in its own units.

    Raises:
        DataError: the target column is missing, or holds empty or non-numeric
            values.
    """
    if prep.target not in frame:
        raise DataError(
            f"{source}: no target column {prep.target!r}; a labelled file is needed"
        )
    column = frame[prep.target]
    parsed = pd.to_numeric(column, errors="coerce")
    if n := int(parsed.isna().sum()):
        raise DataError(
            f"{source}: {n} row(s) of {prep.target!r} are empty or not numbers"
        )
    return parsed.to_numpy(dtype=np.float64)


def labels(prep: Preprocessing, frame: pd.DataFrame, *, source: str) -> np.ndarray:
    """The label codes of a labelled file (the run's target column).

    Raises:
        DataError: the target column is missing, empty or holds unknown labels.
    """
    if prep.target not in frame:
        raise DataError(
            f"{source}: no label column {prep.target!r}; a labelled file is needed"
        )
    column = frame[prep.target]
    if column.isna().any():
        raise DataError(
            f"{source}: {int(column.isna().sum())} row(s) without a label in "
            f"{prep.target!r}"
        )
    if pd.api.types.is_float_dtype(column) and bool((column % 1 == 0).all()):
        column = column.astype(np.int64)
    try:
        return prep.encode_labels(column)
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
