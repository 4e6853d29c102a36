"""Export a trained model to ONNX or TorchScript, preprocessing included, and check
that the exported file predicts what fedvault predicts.

The exported graph takes the records' columns as (up to) two inputs and returns
class probabilities (a regression run: ``value``, the predicted target in its own
units, shape (n, 1)):

- ``numeric``: float32 (n, numeric columns), in the sidecar's column order; a
  missing value is NaN; imputation (global mean) and standardization run inside;
- ``categorical``: int64 (n, categorical columns): per column, the index of the
  value in the sidecar's vocabulary, -1 for a category not seen in training, and
  the index of the column's mode for a missing value (what :func:`encode_inputs`
  does); the one-hot encoding runs inside.

Strings cannot enter a graph exported from PyTorch, so that one step lives in the
sidecar JSON (``<file>.json``), which also names the inputs, the columns and the
classes. Only onnxruntime (or torch for TorchScript) and numpy are needed to use it.

An image model's graph takes ``pixels``: float32 (n, channels, height, width) in
[0, 1], the image already resized to the model's size (the sidecar says how the run
read images); everything after that runs inside.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedvault.common.errors import DataError, FederationError
from fedvault.common.files import atomic_write
from fedvault.common.preprocessing import Preprocessing
from fedvault.server.trained import TrainedModel, features


class ExportFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


SUFFIXES = {ExportFormat.ONNX: ".onnx", ExportFormat.TORCHSCRIPT: ".torchscript.pt"}
TOLERANCE = 1e-5
SAMPLE_ROWS = 256
PIXELS_INPUT = "pixels"


class Pipeline(nn.Module):
    """Preprocessing, the network and the probabilities in one module."""

    def __init__(self, model: nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.means: torch.Tensor
        self.stds: torch.Tensor
        self.register_buffer("means", torch.tensor(prep.means, dtype=torch.float32))
        self.register_buffer("stds", torch.tensor(prep.stds, dtype=torch.float32))
        # The bounds a site's summary release clipped to (Preprocessing._bounded).
        flags = prep.asinh or (False,) * len(prep.numeric)
        clips = prep.clips or ((0.0, 0.0),) * len(prep.numeric)
        lows = [lo if hi > lo else -math.inf for lo, hi in clips]
        highs = [hi if hi > lo else math.inf for lo, hi in clips]
        self.asinh: torch.Tensor
        self.lows: torch.Tensor
        self.highs: torch.Tensor
        self.register_buffer("asinh", torch.tensor(flags, dtype=torch.bool))
        self.register_buffer("lows", torch.tensor(lows, dtype=torch.float32))
        self.register_buffer("highs", torch.tensor(highs, dtype=torch.float32))
        self.vocab_sizes = [len(v) for v in prep.vocab]
        self.has_numeric = bool(prep.numeric)
        self.image = bool(prep.image_shape)
        self.head = _Head(prep)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.image:
            return self.head.forward(self.model(inputs[0]))
        parts = []
        if self.has_numeric:
            x = inputs[0]
            x = torch.where(self.asinh, torch.asinh(x), x)
            x = torch.minimum(torch.maximum(x, self.lows), self.highs)
            x = torch.where(torch.isnan(x), self.means, x)
            parts.append((x - self.means) / self.stds)
        if self.vocab_sizes:
            codes = inputs[-1]
            for i, size in enumerate(self.vocab_sizes):
                categories = torch.arange(size, dtype=codes.dtype)
                parts.append((codes[:, i : i + 1] == categories).to(torch.float32))
        return self.head.forward(self.model(torch.cat(parts, dim=1)))


class _Head(nn.Module):
    """Logits to probabilities, or (regression) the standardized output back to the
    target's units."""

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__()
        self.regression = prep.regression
        self.binary = prep.num_classes == 2
        self.shift = float(prep.target_mean)
        self.scale = float(prep.target_std)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return out[:, :1] * self.scale + self.shift
        if self.binary:
            p1 = torch.sigmoid(out[:, 0])
            return torch.stack([1 - p1, p1], dim=1)
        return torch.softmax(out, dim=1)


def input_names(prep: Preprocessing) -> list[str]:
    if prep.image_shape:
        return [PIXELS_INPUT]
    return (["numeric"] if prep.numeric else []) + (
        ["categorical"] if prep.categorical else []
    )


def output_name(prep: Preprocessing) -> str:
    return "value" if prep.regression else "probabilities"


def encode_inputs(prep: Preprocessing, frame: pd.DataFrame) -> list[np.ndarray]:
    """The exported graph's inputs for ``frame`` (see the module docstring)."""
    if prep.image_shape:
        return [prep.transform(frame)]
    inputs = []
    if prep.numeric:
        num = frame[list(prep.numeric)].apply(pd.to_numeric, errors="coerce")
        inputs.append(num.to_numpy(dtype=np.float32, copy=True))
    if prep.categorical:
        codes = np.empty((len(frame), len(prep.categorical)), dtype=np.int64)
        for i, (col, vocab, mode) in enumerate(
            zip(prep.categorical, prep.vocab, prep.modes, strict=True)
        ):
            index = {c: j for j, c in enumerate(vocab)}
            values = frame[col].astype("string").fillna(mode).astype(str)
            codes[:, i] = [index.get(v, -1) for v in values]
        inputs.append(codes)
    return inputs


def sidecar(trained: TrainedModel, fmt: ExportFormat) -> dict[str, Any]:
    """What a user of the exported file needs to feed it."""
    prep = trained.prep
    described: dict[str, dict[str, Any]] = {
        "numeric": {
            "dtype": "float32",
            "columns": list(prep.numeric),
            "missing": "NaN (imputed with the training mean inside the graph)",
        },
        "categorical": {
            "dtype": "int64",
            "columns": list(prep.categorical),
            "vocabulary": {
                c: list(v) for c, v in zip(prep.categorical, prep.vocab, strict=True)
            },
            "missing": {
                c: m for c, m in zip(prep.categorical, prep.modes, strict=True)
            },
            "encoding": "index of the value in the column's vocabulary; -1 for a "
            "category not seen in training; a missing value counts as the "
            "column's 'missing' entry",
        },
    }
    if prep.image_shape:
        described = {PIXELS_INPUT: _pixels_input(trained)}
    output: dict[str, Any] = {"name": output_name(prep), "classes": list(prep.labels)}
    if prep.regression:
        output = {
            "name": output_name(prep),
            "shape": ["n", 1],
            "meaning": f"the predicted {prep.target!r}, in its own units",
        }
    return {
        "format": str(fmt),
        "inputs": [{"name": n, **described[n]} for n in input_names(prep)],
        "output": output,
        "target": prep.target,
        "task": prep.task,
        "model": trained.config.model,
        "rounds_completed": trained.rounds_completed,
        "source": str(trained.path),
    }


def _pixels_input(trained: TrainedModel) -> dict[str, Any]:
    c, h, w = trained.prep.image_shape
    return {
        "dtype": "float32",
        "shape": ["n", c, h, w],
        "pixels": "in [0, 1]: 8-bit values / 255, 16-bit / 65535; DICOM after its "
        "rescale slope/intercept and window; resized to "
        f"{h}x{w} (bilinear, antialiased) with {c} channel(s), as the run read "
        "its images (fedvault.common.images)",
    }


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    rows_checked: int
    sample: str
    max_abs_diff: float


def export(
    trained: TrainedModel,
    fmt: ExportFormat,
    out: Path,
    *,
    sample: pd.DataFrame | np.ndarray | None = None,
    sample_name: str = "",
) -> ExportResult:
    """Write the exported model and its sidecar, after checking the export.

    The file is exported to a temporary folder, loaded back with onnxruntime (ONNX)
    or ``torch.jit.load`` (TorchScript) and run on ``sample`` (records, or for an
    image model pixels (n, c, h, w); default: rows drawn from the run's
    preprocessing statistics, or random images); only when its outputs match
    fedvault's own within :data:`TOLERANCE` (regression: in standard deviations
    of the target) is anything written to ``out``.

    Raises:
        DataError: a compressed model, or a sample that does not fit the model.
        FederationError: the exported file does not match (nothing written).
    """
    if trained.compression is not None:
        raise DataError(f"{trained.path}: export the model as trained, not compressed")
    prep = trained.prep
    if sample is None:
        sample, sample_name = _default_sample(prep)
    if isinstance(sample, np.ndarray):
        inputs = [sample[:SAMPLE_ROWS]]
        x = inputs[0]
    else:
        sample = sample.head(SAMPLE_ROWS)
        x = features(prep, sample, source=sample_name)[0]
        inputs = encode_inputs(prep, sample)
    expected = _expected(trained, x)
    pipeline = Pipeline(trained.model, prep).eval()
    with _quiet_exporters():
        data = _exported_bytes(pipeline, fmt, prep, inputs)
        # run from the bytes alone: the file must hold everything it needs
        if fmt is ExportFormat.ONNX:
            got = _run_onnx(data, prep, inputs)
        else:
            got = _run_torchscript(data, inputs)
    scale = prep.target_std if prep.regression else 1.0
    diff = float(np.max(np.abs(got - expected))) / scale
    if not diff <= TOLERANCE:
        raise FederationError(
            f"the exported {fmt} model differs from the PyTorch model by "
            f"{diff:.3g} (> {TOLERANCE:g}); nothing written"
        )
    side = out.with_name(out.name + ".json")
    atomic_write(out, data)
    atomic_write(side, (json.dumps(sidecar(trained, fmt), indent=2) + "\n").encode())
    return ExportResult(out, side, len(inputs[0]), sample_name, diff)


def _default_sample(prep: Preprocessing) -> tuple[pd.DataFrame | np.ndarray, str]:
    if prep.image_shape:
        rng = np.random.default_rng(0)
        pixels = rng.random((SAMPLE_ROWS, *prep.image_shape), dtype=np.float32)
        return pixels, "random images of the model's shape (uniform pixels in [0, 1])"
    return synthetic_rows(prep), "synthetic rows drawn from the run's statistics"


def _expected(trained: TrainedModel, x: np.ndarray) -> np.ndarray:
    if trained.regression:
        return trained.values(x)[:, np.newaxis]
    return trained.probabilities(x)


def synthetic_rows(prep: Preprocessing, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """Records drawn from the run's preprocessing statistics (means, standard
    deviations, vocabularies), with missing values and an unseen category."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(index=range(rows))
    for col, mean, std in zip(prep.numeric, prep.means, prep.stds, strict=True):
        values = rng.normal(mean, std, rows)
        values[rng.random(rows) < 0.05] = np.nan
        frame[col] = values
    for col, vocab in zip(prep.categorical, prep.vocab, strict=True):
        choices = np.array([*vocab, "(unseen)", None], dtype=object)
        frame[col] = choices[rng.integers(0, len(choices), rows)]
    return frame


def _exported_bytes(
    pipeline: Pipeline,
    fmt: ExportFormat,
    prep: Preprocessing,
    inputs: list[np.ndarray],
) -> bytes:
    args = tuple(torch.from_numpy(a) for a in inputs)
    with tempfile.TemporaryDirectory(prefix="fedvault-export-") as tmp:
        file = Path(tmp) / f"model{SUFFIXES[fmt]}"
        if fmt is ExportFormat.ONNX:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                pipeline,
                args,
                str(file),
                input_names=input_names(prep),
                output_names=[output_name(prep)],
                # one entry: forward's *inputs
                dynamic_shapes=(tuple({0: batch} for _ in inputs),),
                external_data=False,
                verbose=False,
            )
        else:
            traced = torch.jit.trace(pipeline, args)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(file))
        return file.read_bytes()


def _run_onnx(data: bytes, prep: Preprocessing, inputs: list[np.ndarray]) -> np.ndarray:
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = dict(zip(input_names(prep), inputs, strict=True))
    return np.asarray(session.run(None, feed)[0], dtype=np.float64)


def _run_torchscript(data: bytes, inputs: list[np.ndarray]) -> np.ndarray:
    loaded = torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        out = loaded(*(torch.from_numpy(a) for a in inputs))
    return np.asarray(out.numpy(), dtype=np.float64)


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """torch 2.9+ warns that TorchScript is deprecated (it still works, and its
    files load in C++ without Python) and its ONNX exporter logs optional
    torchvision ops; neither concerns the user."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`torch\.jit\.", DeprecationWarning)
            warnings.filterwarnings("ignore", r"`isinstance\(treespec", FutureWarning)
            warnings.filterwarnings("ignore", "# The axis name", UserWarning)
            yield
    finally:
        onnx_logger.setLevel(level)
