"""Smaller models with PyTorch's own tools: magnitude pruning
(``torch.nn.utils.prune.l1_unstructured``, per Linear and Conv2d layer) and int8
dynamic quantization (``torch.ao.quantization.quantize_dynamic``: int8 weights,
activations quantized on the fly, CPU). Dynamic quantization applies to Linear
layers only: an image model's convolutions stay float32 (pruned, where asked).

Sizes are those of the saved weights (``torch.save``), as written and gzipped.
Pruning alone zeroes weights but keeps the dense layout, so it shows in the gzipped
size only; a pruned int8 model is saved sparse (:mod:`fedvault.server.sparse`: a
bit mask and the int8 codes of the weights kept), so pruning shrinks the file.
"""

from __future__ import annotations

import copy
import gzip
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from fedvault.common.errors import ConfigError, DataError
from fedvault.common.evaluation import evaluate
from fedvault.common.files import atomic_write
from fedvault.server import sparse
from fedvault.server.trained import TrainedModel


@contextmanager
def quiet_quantized() -> Iterator[None]:
    """torch >= 2.9 marks ``torch.ao.quantization`` and quantized tensors
    deprecated (in favour of torchao); they still ship and work, add no
    dependency, and the warnings are no news to the user of a command."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
        yield


def quantize_int8(model: nn.Module) -> nn.Module:
    """The model with every Linear layer quantized to int8 weights (activations
    quantized on the fly); runs on CPU."""
    with quiet_quantized():
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {nn.Linear}, dtype=torch.qint8
        )
    return quantized


def prune_linear(model: nn.Module, amount: float) -> nn.Module:
    """A copy of the model with the ``amount`` share of smallest-magnitude weights
    of each Linear and Conv2d layer set to zero (biases kept)."""
    pruned = copy.deepcopy(model)
    for module in pruned.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            torch_prune.l1_unstructured(module, name="weight", amount=amount)  # type: ignore[no-untyped-call]
            torch_prune.remove(module, "weight")  # type: ignore[no-untyped-call]
    return pruned


@dataclass(frozen=True)
class Variant:
    """One version of the model and what it measures."""

    name: str
    size: int
    gzipped: int
    accuracy: float | None = None
    auc: float | None = None
    r2: float | None = None
    mae: float | None = None


def check_settings(quantize: str, prune: float) -> None:
    """Raises ConfigError for an unknown quantization, a share outside [0, 1), or
    nothing to do."""
    if quantize not in ("int8", "none"):
        raise ConfigError(f"quantize: unknown {quantize!r}; use int8 or none")
    if not 0 <= prune < 1:
        raise ConfigError(
            f"prune: the share of weights to zero must be in [0, 1), got {prune:g}"
        )
    if quantize == "none" and prune == 0:
        raise ConfigError("nothing to do: give --quantize int8 and/or --prune SHARE")


def check_source(trained: TrainedModel) -> None:
    """Raises DataError when the model file is already compressed."""
    if trained.compression is not None:
        raise DataError(f"{trained.path}: already compressed; start from model.pt")


def compress(
    trained: TrainedModel,
    *,
    quantize: str,
    prune: float,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[nn.Module, list[Variant]]:
    """The compressed model and the table: as trained, each step alone, both.

    ``labelled`` (features, label codes; regression: standardized targets, as
    :func:`~fedvault.server.trained.labels` gives them) adds accuracy and AUC (R²
    and MAE) to every row. A pruned int8 table model is saved sparse.

    Raises:
        ConfigError: see :func:`check_settings`.
        DataError: the model is already compressed.
    """
    check_settings(quantize, prune)
    check_source(trained)
    is_sparse = _is_sparse(trained, quantize, prune)
    steps: list[tuple[str, nn.Module]] = [("as trained", trained.model)]
    model = trained.model
    if prune > 0:
        model = prune_linear(model, prune)
        steps.append((f"pruned {prune:.0%}", model))
    if quantize == "int8":
        steps.append(("int8", quantize_int8(copy.deepcopy(trained.model))))
        if prune > 0:
            model = quantize_int8(copy.deepcopy(model))
            steps.append((f"int8 + pruned {prune:.0%}", model))
        else:
            model = steps[-1][1]
    last = len(steps) - 1  # the model save() writes, sparse if pruned and int8
    rows = [
        _measure(name, m, trained, labelled, sparse_saved=i == last and is_sparse)
        for i, (name, m) in enumerate(steps)
    ]
    return model, rows


def _is_sparse(trained: TrainedModel, quantize: str, prune: float) -> bool:
    """Whether the model is saved sparse: pruned int8, every layer a Linear one
    (an image model's convolutions stay float; it is saved dense)."""
    return quantize == "int8" and prune > 0 and not trained.image


def _measure(
    name: str,
    model: nn.Module,
    trained: TrainedModel,
    labelled: tuple[np.ndarray, np.ndarray] | None,
    *,
    sparse_saved: bool,
) -> Variant:
    with quiet_quantized():
        size, gzipped = sparse.size(model) if sparse_saved else state_size(model)
    if labelled is None:
        return Variant(name, size, gzipped)
    x, y = labelled
    prep = trained.prep
    m = evaluate(
        model,
        torch.from_numpy(x),
        torch.from_numpy(y),
        num_classes=prep.num_classes,
        task="regression" if prep.regression else None,
        target_scale=(prep.target_mean, prep.target_std),
        batch_size=512,
    )
    if prep.regression:
        return Variant(name, size, gzipped, r2=_number(m.r2), mae=_number(m.mae))
    return Variant(name, size, gzipped, m.accuracy, _number(m.auc))


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def state_size(model: nn.Module) -> tuple[int, int]:
    """Bytes of the model's saved state dict, as written and gzipped."""
    buffer = io.BytesIO()
    with quiet_quantized():
        torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    return len(data), len(gzip.compress(data, mtime=0))


def save(trained: TrainedModel, model: nn.Module, out: Path, **how: Any) -> None:
    """Write the compressed model as a model file the ``fedvault model`` commands
    read (preprocessing and settings of the original, plus how it was made; a
    pruned int8 model sparse, under ``sparse``, with an empty ``state_dict``)."""
    weights: dict[str, Any] = {"state_dict": model.state_dict()}
    if _is_sparse(trained, str(how.get("quantize")), float(how.get("prune", 0.0))):
        weights = {"state_dict": {}, "sparse": sparse.encode(model)}
        how = how | {"format": sparse.FORMAT}
    buffer = io.BytesIO()
    with quiet_quantized():
        torch.save(
            weights
            | {
                "preprocessing": trained.prep.to_json(),
                "config": trained.config.to_run_config(),
                "rounds_completed": trained.rounds_completed,
                "compression": dict(how),
            }
            | _version_of(trained),
            buffer,
        )
    atomic_write(out, buffer.getvalue())


def _version_of(trained: TrainedModel) -> dict[str, Any]:
    """The source's version keys (a compressed model is that version, smaller)."""
    from fedvault.server import lineage
    from fedvault.server.trained import read_bundle

    bundle = read_bundle(trained.path)
    keys = (lineage.VERSION, lineage.PARENT, lineage.LINEAGE)
    return {k: bundle[k] for k in keys if k in bundle}
