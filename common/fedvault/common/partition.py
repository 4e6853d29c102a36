"""Splitting one table into simulated sites with flwr-datasets partitioners."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from fedvault.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PartitionKind = Literal["iid", "dirichlet", "column"]

#: A site holds back this share of its rows for validation ...
VALIDATION_SHARE = 0.15
#: ... when it has at least this many rows (else it has no validation split).
VALIDATION_FROM_ROWS = 20
#: A site with fewer training rows does not train.
MIN_TRAIN_ROWS = 8


def validation_rows(rows: int) -> int:
    """How many of a site's ``rows`` (labelled) rows it holds back for validation."""
    return round(rows * VALIDATION_SHARE) if rows >= VALIDATION_FROM_ROWS else 0


def too_small(rows: int) -> bool:
    """Whether a site of ``rows`` labelled rows has too few training rows to train."""
    return rows - validation_rows(rows) < MIN_TRAIN_ROWS


@dataclass(frozen=True)
class PartitionSpec:
    """How rows are dealt to sites: ``iid``, ``dirichlet:ALPHA`` or ``column:NAME``."""

    kind: PartitionKind
    alpha: float = 0.0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse the ``--partition`` value; raises :class:`ConfigError`."""
        name, _, arg = text.partition(":")
        if name == "iid" and not arg:
            return cls("iid")
        if name == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                alpha = math.nan
            if not math.isfinite(alpha) or alpha <= 0:
                raise ConfigError(
                    f"partition: dirichlet needs a positive ALPHA, got {arg!r} "
                    "(e.g. dirichlet:0.5)"
                )
            return cls("dirichlet", alpha=alpha)
        if name == "column" and arg:
            return cls("column", column=arg)
        raise ConfigError(
            f"partition: unknown value {text!r}; use iid, dirichlet:ALPHA or "
            "column:NAME"
        )

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "column":
            return f"column:{self.column}"
        return "iid"


def _by_column(
    frame: pd.DataFrame, column: str, *, target: str
) -> list[tuple[str, pd.DataFrame]]:
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    if column not in frame.columns:
        raise DataError(f"partition column {column!r} not in the data")
    if column == target:
        raise ConfigError("partition: the site column cannot be the target")
    keys = frame[column].map(_site_key, na_action="ignore").astype("str")
    keys = keys.where(keys.str.strip() != "")
    absent = int(keys.isna().sum())
    if absent == len(frame):
        raise DataError(f"partition column {column!r} has no values")
    if absent:
        logger.warning(
            "partition column %r is empty in %d row(s): they belong to no site and "
            "are left out",
            column,
            absent,
        )
    keyed = frame.assign(**{column: keys})[keys.notna()].reset_index(drop=True)
    partitioner = NaturalIdPartitioner(partition_by=column)
    partitioner.dataset = Dataset.from_pandas(keyed, preserve_index=False)
    _ = partitioner.num_partitions  # builds the id -> value map
    ids = partitioner.partition_id_to_natural_id
    sites = []
    # (its tqdm bar would print to stderr around the command's own one-line errors)
    with contextlib.redirect_stderr(io.StringIO()):
        for pid in sorted(ids, key=lambda i: str(ids[i])):
            part = partitioner.load_partition(pid).to_pandas()
            sites.append((f"{column}={ids[pid]}", part.drop(columns=column)))
    return sites


def _site_key(value: object) -> str:
    """A site's name from its cell: its text (a CSV's site column is read as raw
    text, so ``007`` stays ``007``), stripped; a typed number (Parquet) without a
    ``.0`` (7, not 7.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def partition_table(
    frame: pd.DataFrame, spec: PartitionSpec, *, num_sites: int, target: str, seed: int
) -> list[tuple[str, pd.DataFrame]]:
    """Deal the rows of ``frame`` to sites; returns ``(site_name, rows)`` pairs.

    ``column:NAME`` makes one site per distinct value and drops the column from the
    features; ``num_sites`` is then ignored. A row without a value in that column
    belongs to no site: such rows are left out, with a warning naming the column
    and how many. Partitioning itself is done by flwr-datasets on an in-memory
    ``datasets.Dataset`` (nothing is downloaded). Raises :class:`ConfigError` for
    impossible settings and :class:`DataError` when the column is absent or empty.
    """
    if spec.kind == "column":
        return _by_column(frame, spec.column, target=target)
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        Partitioner,
    )

    if num_sites > len(frame):
        raise ConfigError(
            f"sites: {num_sites} sites but only {len(frame)} rows; use fewer sites"
        )
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    dataset = Dataset.from_pandas(shuffled, preserve_index=False)
    partitioner: Partitioner
    if spec.kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_sites)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_sites,
            partition_by=target,
            alpha=spec.alpha,
            min_partition_size=0,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = dataset
    return [
        (f"site-{pid + 1}", partitioner.load_partition(pid).to_pandas())
        for pid in range(num_sites)
    ]


def hold_out(
    frame: pd.DataFrame, target: str, share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test, rest): a ``share`` of the rows held out for central evaluation,
    stratified by ``target`` where every class has two rows or more.

    Raises :class:`DataError` when the split cannot be made.
    """
    from sklearn.model_selection import train_test_split

    counts = frame[target].value_counts()
    stratify = frame[target] if counts.min() >= 2 else None
    try:
        rest, test = train_test_split(
            frame, test_size=share, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(f"cannot hold out a test split: {exc}") from exc
    return test.reset_index(drop=True), rest.reset_index(drop=True)
