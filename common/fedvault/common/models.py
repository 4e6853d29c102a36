"""Model architectures and their heads, shared by sites and coordinator (same code on
both sides).

A task is ``binary`` (one logit, binary cross-entropy), ``multiclass`` (one logit per
class, cross-entropy) or ``regression`` (one output, MSE or Huber loss). Where a
function takes ``num_classes`` and an optional ``task``, a missing task is inferred
from the class count (2: binary, more: multiclass); for regression ``num_classes``
is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import pandas as pd
import torch
from torch import nn

from fedvault.common.config import MODEL_NAMES, ModelName, RegressionLoss
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.model_zoo import (
    InputSpec,
    build_plugin,
    is_plugin,
    prepare_for_dp,
    resnet18,
    small_cnn,
)
from fedvault.common.preprocessing import Preprocessing

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)
IMAGE_MODELS = ("cnn", "resnet18")
TABULAR_MODELS = ("mlp", "logreg")
MAX_CLASSES = 20  # a numeric target with more distinct values is a regression one
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_for(num_classes: int, task: Task | None = None) -> Task:
    """``task`` if given, else the classification task of ``num_classes`` classes.

    Raises :class:`ValueError` for an unknown task, or a classification task with
    fewer than 2 classes.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if task == "regression":
        return task
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return task or ("binary" if num_classes == 2 else "multiclass")


def output_units(num_classes: int, *, task: Task | None = None) -> int:
    """One output for a binary or regression task, one per class otherwise."""
    return num_classes if task_for(num_classes, task) == "multiclass" else 1


def build_model(
    name: ModelName | str,
    *,
    in_features: int | None = None,
    num_classes: int = 0,
    hidden: int = 128,
    input_spec: InputSpec | None = None,
    task: Task | None = None,
) -> nn.Module:
    """Build a built-in model, or a plug-in ``package.module:factory``.

    Built-ins: ``mlp`` (Dense(hidden)-ReLU -> head) and ``logreg`` (one linear
    layer, zero at the start) for tables;
    ``cnn`` (:func:`~fedvault.common.model_zoo.small_cnn`) and ``resnet18``
    (:func:`~fedvault.common.model_zoo.resnet18`, GroupNorm) for images. The input
    is ``input_spec``, or ``in_features`` for a table. The head has
    :func:`output_units` units: one logit for a binary task (use :func:`loss_fn` for
    the matching loss), one per class for a multi-class one, one value for
    regression.

    Raises :class:`ValueError` for a missing or bad input size, a bad class count,
    an unknown name, or a model that does not fit the kind of input;
    :class:`ConfigError` (a ``ValueError``) for a plug-in that cannot be used.
    """
    spec = _spec(in_features, input_spec)
    out = output_units(num_classes, task=task)
    if is_plugin(name):
        return build_plugin(name, spec, out)
    if name in TABULAR_MODELS and spec.features is None:
        raise ConfigError(
            f"model {name!r} takes tables; use cnn or resnet18 for images"
        )
    if name in IMAGE_MODELS and spec.features is not None:
        raise ConfigError(f"model {name!r} takes images; use mlp or logreg for tables")
    features = spec.features or 0
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
    if name == "logreg":
        return nn.Sequential(_zero(nn.Linear(features, out)))
    if name == "cnn":
        return small_cnn(spec, out, hidden=hidden)
    if name == "resnet18":
        return resnet18(spec, out)
    raise ConfigError(
        f"unknown model {name!r}; choose one of {MODEL_NAMES} "
        "or a plug-in package.module:factory"
    )


def _zero(layer: nn.Linear) -> nn.Linear:
    """A linear model starts at zero, the usual start of a convex fit.

    PyTorch's random start puts weight on directions that SGD then barely moves:
    on correlated columns (radius, perimeter and area of the breast-cancer table)
    it stayed in the model. On ``fedvault simulate --target 'mean area'``, 5
    sites, epsilon 3, lr 0.1, test R2 went from 0.930 to 0.962 (seed 0) and from
    0.927 to 0.945 (seed 1); docs/models.md, "Measured".
    """
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def infer_task(target: pd.Series) -> Literal["classification", "regression"]:
    """``regression`` for a numeric target with fractional values or more than
    :data:`MAX_CLASSES` distinct values, else ``classification``."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.dropna()
    fractional = bool((values != values.round()).any())
    many = values.nunique() > MAX_CLASSES
    return "regression" if fractional or many else "classification"


def run_task(prep: Preprocessing) -> Task:
    """The model task of a federation's preprocessing."""
    return task_for(prep.num_classes, "regression" if prep.regression else None)


def build_run_model(
    name: str, prep: Preprocessing, *, hidden: int, dp: bool
) -> tuple[nn.Module, tuple[str, ...]]:
    """The run's model, built the same way on the coordinator and at every site:
    :func:`build_model` for the preprocessing's input and task, then (with DP)
    :func:`~fedvault.common.model_zoo.prepare_for_dp`, whose notes say what was
    changed. Raises :class:`ConfigError` for a model that cannot be built or
    trained with DP-SGD (one line naming the layer), :class:`DataError` when the
    sites' summaries name fewer than two classes, :class:`ValueError` for a bad
    input size."""
    if not prep.regression and prep.num_classes < 2:
        raise DataError(
            f"the sites' summaries name {prep.num_classes} class(es) of "
            f"{prep.target!r}, a classification needs 2 or more: under DP a class "
            "is released only above a noisy count unless the sites' schema "
            "declares it (docs/privacy.md)"
        )
    model = build_model(
        name,
        input_spec=prep.input_spec,
        num_classes=prep.num_classes,
        hidden=hidden,
        task=run_task(prep),
    )
    if not dp:
        return model, ()
    return prepare_for_dp(model)


def loss_fn(
    num_classes: int,
    *,
    task: Task | None = None,
    regression_loss: RegressionLoss = "mse",
) -> nn.Module:
    """Loss matching :func:`build_model`'s head (mean reduction); regression takes
    ``regression_loss``: MSE, or Huber with delta 1 (on standardized targets)."""
    kind = task_for(num_classes, task)
    if kind == "regression":
        return nn.HuberLoss() if regression_loss == "huber" else nn.MSELoss()
    return nn.BCEWithLogitsLoss() if kind == "binary" else nn.CrossEntropyLoss()


def per_sample_loss(
    num_classes: int,
    *,
    task: Task | None = None,
    regression_loss: RegressionLoss = "mse",
) -> PerSampleLoss:
    """Loss of :func:`loss_fn` per example, shape (n,): the mean of it is the loss."""
    kind = task_for(num_classes, task)
    if kind == "multiclass":
        ce = nn.CrossEntropyLoss(reduction="none")
        return lambda out, y: ce(out, y)
    elementwise: nn.Module
    if kind == "binary":
        elementwise = nn.BCEWithLogitsLoss(reduction="none")
    elif regression_loss == "huber":
        elementwise = nn.HuberLoss(reduction="none")
    else:
        elementwise = nn.MSELoss(reduction="none")
    return lambda out, y: elementwise(out, y).sum(dim=1)


def targets_for_loss(
    y: torch.Tensor, num_classes: int, *, task: Task | None = None
) -> torch.Tensor:
    """Shape targets for the loss of the head: float (n, 1) for a binary or
    regression task, int64 (n,) class indices for a multi-class one."""
    if task_for(num_classes, task) == "multiclass":
        return y.long()
    return y.float().unsqueeze(1)


def predict_proba(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class probabilities, shape (n, num_classes)."""
    if num_classes == 2:
        p1 = torch.sigmoid(logits.squeeze(1))
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)


def _spec(in_features: int | None, input_spec: InputSpec | None) -> InputSpec:
    if input_spec is not None:
        if in_features is not None and input_spec.shape != (in_features,):
            raise ValueError(
                f"in_features={in_features} disagrees with input_spec {input_spec}"
            )
        return input_spec
    if in_features is None or in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")
    return InputSpec.tabular(in_features)
