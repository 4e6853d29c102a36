"""The plots of ``fedvault report``, drawn with matplotlib (Agg) into PNG bytes.

Every function takes what the run folder recorded and returns one PNG, or None
when there is nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

_COLOURS = ("#3b6ea8", "#d9822b", "#3a9a5b", "#b63c3c", "#7a5aa6", "#6b6b6b")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, *, rounds: bool = True) -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    for ax in fig.axes if rounds else ():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _series(
    history: Sequence[Mapping[str, Any]], key: str
) -> tuple[list[int], list[float]]:
    points = [
        (row["round"], row[key])
        for row in history
        if isinstance(row.get(key), int | float)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def metrics_plot(
    history: Sequence[Mapping[str, Any]], *, regression: bool = False
) -> bytes | None:
    """Accuracy, AUC and validation accuracy (left) and losses (right) per round;
    a regression run: R² (left) and MAE and RMSE in the target's units (right)."""
    if not history:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    lines = {
        left: (
            ("accuracy", "test accuracy", _COLOURS[0]),
            ("auc", "test AUC", _COLOURS[1]),
            ("val_accuracy", "site validation accuracy", _COLOURS[2]),
        ),
        right: (
            ("loss", "test loss", _COLOURS[0]),
            ("val_loss", "site validation loss", _COLOURS[2]),
        ),
    }
    titles = ("Accuracy and AUC per round", "loss", "Loss per round")
    if regression:
        lines = {
            left: (
                ("r2", "test R²", _COLOURS[0]),
                ("val_r2", "site validation R²", _COLOURS[2]),
            ),
            right: (
                ("mae", "test MAE", _COLOURS[0]),
                ("rmse", "test RMSE", _COLOURS[1]),
            ),
        }
        titles = ("R² per round", "target units", "MAE and RMSE per round")
    for ax, series in lines.items():
        for key, label, colour in series:
            x, y = _series(history, key)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=label, color=colour)
    left.set(xlabel="round", ylabel="score", title=titles[0])
    right.set(xlabel="round", ylabel=titles[1], title=titles[2])
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def epsilon_plot(
    per_round: Mapping[str, Sequence[tuple[int, float]]],
    budgets: Mapping[str, float | None],
) -> bytes | None:
    """Epsilon spent by each site after each round, against its budget."""
    if not any(per_round.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    legend = len(per_round) <= 10
    for i, (site, points) in enumerate(sorted(per_round.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            markersize=3,
            linewidth=1.2,
            color=colour,
            label=site if legend else None,
        )
    for value in sorted({b for b in budgets.values() if b is not None}):
        ax.axhline(value, color="#b63c3c", linestyle="--", linewidth=1)
        ax.annotate(
            f"budget {value:g}",
            (0.005, value),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="#b63c3c",
        )
    ax.set(
        xlabel="round",
        ylabel="epsilon (this run)",
        title=f"Privacy spent per site ({len(per_round)} sites)",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8, ncol=min(len(per_round), 5), loc="lower right")
    return _png(fig)


def events_plot(counts: Mapping[str, Mapping[int, int]], rounds: int) -> bytes | None:
    """Declines, failures and rejected updates per round (stacked bars)."""
    if rounds < 1:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.8))
    x = list(range(1, rounds + 1))
    bottom = [0] * rounds
    for i, (kind, per_round) in enumerate(counts.items()):
        heights = [per_round.get(r, 0) for r in x]
        ax.bar(x, heights, bottom=bottom, label=kind, color=_COLOURS[i + 1])
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set(
        xlabel="round",
        ylabel="sites",
        title="Declines, failures and rejected updates per round",
    )
    ax.set_ylim(0, max(max(bottom), 1) + 0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def labels_plot(sites: Mapping[str, Mapping[str, int]]) -> bytes | None:
    """Each site's label shares (stacked horizontal bars, one per site); None
    where the sites released no label counts (a regression target)."""
    if not sites or not any(sites.values()):
        return None
    plt = _pyplot()
    names = list(sites)
    labels = sorted({label for counts in sites.values() for label in counts})
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.25 * len(names)))
    left = [0.0] * len(names)
    for i, label in enumerate(labels):
        shares = [sites[n].get(label, 0) / (sum(sites[n].values()) or 1) for n in names]
        colour = _COLOURS[(i + 1) % len(_COLOURS)]
        ax.barh(names, shares, left=left, color=colour, label=f"label {label}")
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set(xlabel="share of the site's rows", title="Label distribution per site")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=min(len(labels), 6), loc="lower right")
    return _png(fig, rounds=False)


def shift_plot(
    shifts: Mapping[str, Mapping[str, float]], *, limit: int
) -> bytes | None:
    """Heat map of each site's standardized mean difference to all sites pooled,
    for the ``limit`` features that differ most between sites."""
    features = sorted({f for row in shifts.values() for f in row})
    if not shifts or not features:
        return None
    spread = {f: max(abs(row.get(f, 0.0)) for row in shifts.values()) for f in features}
    shown = sorted(features, key=lambda f: (-spread[f], f))[:limit]
    names = list(shifts)
    grid = [[shifts[n].get(f, 0.0) for f in shown] for n in names]
    bound = max(max(spread[f] for f in shown), 0.5)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.25 * len(names)))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("Mean shift per site against all sites (in pooled std)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _png(fig, rounds=False)
