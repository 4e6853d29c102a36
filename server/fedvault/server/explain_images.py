"""Attribution maps of an image model: which pixels drove a few predictions.

Integrated Gradients (Captum's ``IntegratedGradients``, baseline: a black image, 32
steps) of the predicted class's output (a binary model: its one logit, positive
towards the second class) with respect to each pixel, summed over the channels.
Where Captum cannot be imported, gradient x input (plain autograd) is used instead,
and the output says so. A few images of the folder the user gives are explained,
one per class first; the output names them and counts the classes of the images
the maps were computed on (the folder's labels, or the predicted classes of a flat
folder): a few maps describe those images, not the model everywhere.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvault.common.errors import DataError
from fedvault.common.files import atomic_write
from fedvault.server.image_inputs import ImageInputs
from fedvault.server.trained import TrainedModel

JSON_FILE = "attributions.json"
PNG_FILE = "attributions.png"
INTEGRATED_GRADIENTS = "Integrated Gradients (Captum), black-image baseline, 32 steps"
GRADIENT_X_INPUT = "gradient x input (autograd; Captum not installed)"


@dataclass(frozen=True)
class Explained:
    path: str
    label: str | None
    predicted: str
    probability: float


@dataclass(frozen=True)
class ImageExplanation:
    """The explained images, their maps (n, h, w) and what they were drawn from."""

    computed_on: str
    method: str
    images: tuple[Explained, ...]
    class_balance: dict[str, int]
    balance_of: str
    maps: np.ndarray
    pixels: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "computed_on": self.computed_on,
            "method": self.method,
            "images": [asdict(i) for i in self.images],
            "class_balance": self.class_balance,
            "class_balance_of": self.balance_of,
            "note": "attribution maps of a few images describe the model on those "
            "images only; red pixels raise the predicted class's output, blue "
            "ones lower it",
        }


def explain_images(
    trained: TrainedModel, images: ImageInputs, *, count: int = 6
) -> ImageExplanation:
    """Attribution maps of up to ``count`` images of ``images``.

    Raises:
        DataError: a compressed model (its int8 layers have no gradients), or a
            count below 1.
    """
    if trained.compression is not None:
        raise DataError(f"{trained.path}: explain the model as trained, not compressed")
    if count < 1:
        raise DataError(f"images: must be >= 1, got {count}")
    proba = trained.probabilities(images.pixels)
    names = list(trained.prep.labels)
    predicted = [names[i] for i in proba.argmax(axis=1)]
    chosen = _choose(images.labels or predicted, count)
    x = torch.from_numpy(images.pixels[chosen])
    targets = torch.as_tensor(proba[chosen].argmax(axis=1))
    if len(names) == 2:
        targets = torch.zeros_like(targets)  # one logit
    maps, method = _attribute(trained.model, x, targets)
    explained = tuple(
        Explained(
            path=images.paths[i],
            label=None if images.labels is None else images.labels[i],
            predicted=predicted[i],
            probability=float(proba[i].max()),
        )
        for i in chosen
    )
    balance = Counter(images.labels or predicted)
    return ImageExplanation(
        computed_on=images.source,
        method=method,
        images=explained,
        class_balance={str(k): int(v) for k, v in sorted(balance.items())},
        balance_of="labels (class folders)" if images.labels else "predicted classes",
        maps=maps,
        pixels=images.pixels[chosen],
    )


def _choose(classes: list[str] | tuple[str, ...], count: int) -> list[int]:
    """One image per class in turn (first of each, then second ...), ``count``."""
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        by_class.setdefault(name, []).append(i)
    rounds = zip(*_padded(by_class.values()), strict=True)
    order = [i for group in rounds for i in group if i >= 0]
    return order[:count]


def _padded(groups: Any) -> list[list[int]]:
    lists = [list(g) for g in groups]
    longest = max(len(g) for g in lists)
    return [g + [-1] * (longest - len(g)) for g in lists]


def _attribute(
    model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> tuple[np.ndarray, str]:
    model = model.eval()
    try:
        from captum.attr import IntegratedGradients  # type: ignore[import-untyped]
    except ImportError:
        x = x.clone().requires_grad_(True)
        out = model(x).gather(1, targets.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(out, x)
        maps = (grad * x).sum(dim=1).detach().numpy()
        return maps, GRADIENT_X_INPUT
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, baselines=torch.zeros_like(x), target=targets, n_steps=32)
    return attr.sum(dim=1).detach().numpy(), INTEGRATED_GRADIENTS


def grid(explanation: ImageExplanation) -> bytes:
    """A PNG: one row per image, the image beside its attribution map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(explanation.images)
    fig, axes = plt.subplots(n, 2, figsize=(5, 2.3 * n + 0.6), dpi=100, squeeze=False)
    for row, (item, pixels, amap) in enumerate(
        zip(explanation.images, explanation.pixels, explanation.maps, strict=True)
    ):
        image = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        label = "" if item.label is None else f"label {item.label}, "
        axes[row, 0].set_title(
            f"{Path(item.path).name}: {label}pred. {item.predicted}", fontsize=8
        )
        bound = float(np.abs(amap).max()) or 1.0
        axes[row, 1].imshow(amap, cmap="bwr", vmin=-bound, vmax=bound)
        axes[row, 1].set_title("attribution", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(f"{explanation.method.split(',')[0]}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write(explanation: ImageExplanation, out: Path) -> tuple[Path, Path]:
    """Write ``attributions.json`` and ``attributions.png`` into ``out``."""
    png = grid(explanation)
    text = json.dumps(explanation.to_json(), indent=2) + "\n"
    atomic_write(out / JSON_FILE, text.encode())
    atomic_write(out / PNG_FILE, png)
    return out / JSON_FILE, out / PNG_FILE
