"""Where a site's data lives and how it is split, loaded and turned into tensors.

A site's settings come from its *own* node config (deployment: ``--node-config``);
in simulation Flower only gives ``partition-id``, so the launcher passes each
simulated site's file as the run-config key ``site.<partition-id>.data``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from fedvault.common.data import load_table
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.preprocessing import Preprocessing

VALIDATION_SHARE = 0.15
MIN_TRAIN_ROWS = 8


@dataclass(frozen=True)
class SiteSettings:
    """The site's own name, data file, state folder and privacy policy file."""

    name: str
    data: Path
    state: Path | None = None
    policy: Path | None = None


def site_settings(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> SiteSettings:
    """Resolve the site from its node config (or, in simulation, its partition id)."""
    if "data" in node_config:
        return SiteSettings(
            name=str(node_config.get("site-name", "site")),
            data=Path(str(node_config["data"])),
            state=_path(node_config.get("state")),
            policy=_path(node_config.get("policy")),
        )
    if "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        key = f"site.{pid}.data"
        if key not in run_config:
            raise ConfigError(f"run config has no {key!r} for simulated site {pid}")
        return SiteSettings(
            name=str(run_config.get(f"site.{pid}.name", f"site-{pid + 1}")),
            data=Path(str(run_config[key])),
            state=_path(run_config.get(f"site.{pid}.state")),
        )
    raise ConfigError("node config names no data: set data=PATH (and site-name=NAME)")


def _path(value: object) -> Path | None:
    return Path(str(value)) if value not in (None, "") else None


@dataclass(frozen=True)
class SplitData:
    """A site's rows, split once into train and validation parts."""

    train: pd.DataFrame
    validation: pd.DataFrame


@functools.lru_cache(maxsize=8)
def _load_split(path: str, mtime_ns: int, target: str, seed: int) -> SplitData:
    frame = load_table(Path(path))
    if target not in frame.columns:
        raise DataError(f"{path}: target column {target!r} missing")
    frame = frame[frame[target].notna()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_val = round(len(frame) * VALIDATION_SHARE) if len(frame) >= 20 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    return SplitData(
        train=frame.iloc[np.sort(train_idx)].reset_index(drop=True),
        validation=frame.iloc[np.sort(val_idx)].reset_index(drop=True),
    )


def load_site_data(site: SiteSettings, *, target: str, seed: int) -> SplitData:
    """Load and split the site's data (cached per process while the file is same)."""
    try:
        mtime = site.data.stat().st_mtime_ns
    except OSError as exc:
        raise DataError(f"site {site.name}: cannot read {site.data}") from exc
    return _load_split(str(site.data), mtime, target, seed)


def usable(split: SplitData, target: str) -> str | None:
    """Why the site cannot train, or None when it can."""
    if len(split.train) < MIN_TRAIN_ROWS:
        return f"only {len(split.train)} training rows (< {MIN_TRAIN_ROWS})"
    if split.train[target].nunique() < 2:
        return "a single class in its training rows"
    return None


def to_tensors(frame: pd.DataFrame, prep: Preprocessing) -> TensorDataset:
    """Apply the federation's preprocessing to rows, giving (features, labels)."""
    features = torch.from_numpy(prep.transform(frame))
    labels = torch.from_numpy(prep.encode_labels(frame[prep.target]))
    return TensorDataset(features, labels)
