"""Where a site's data lives and how it is split, loaded and turned into tensors.

A site's settings come from its *own* node config (deployment: ``--node-config``):
either ``vault=DIR key-file=PATH`` (the encrypted site vault, the normal case) or
``data=PATH`` (a plain CSV/Parquet file, for quick experiments), plus ``site-name``,
``state`` and ``policy``. In simulation Flower only gives ``partition-id``, so the
launcher passes each simulated site's settings as run-config keys
``site.<partition-id>.<key>`` — a simulation-only shortcut: a deployed site never
takes its data location or key from the coordinator.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from fedvault.client.data.vault_format import MANIFEST_NAME
from fedvault.common.data import load_table
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.image_table import ImageShape, image_shape_of
from fedvault.common.partition import MIN_TRAIN_ROWS, validation_rows
from fedvault.common.preprocessing import Preprocessing
from fedvault.common.protocol import simulated_site_key
from fedvault.common.tables import read_layout


@dataclass(frozen=True)
class SiteSettings:
    """The site's own name, data file, state folder and privacy policy file."""

    name: str
    data: Path | None = None
    vault: Path | None = None
    key_file: Path | None = None
    state: Path | None = None
    policy: Path | None = None
    schema: Path | None = None  # a data site's schema contract (bounds, categories)
    simulated: bool = False  # one party holds every site (``fedvault simulate``)
    # simulation only (``fedvault privacy audit``): rows added to the training rows
    canaries: Path | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.vault is None):
            raise ConfigError(
                f"site {self.name}: set exactly one of data=PATH or vault=DIR"
            )
        if self.vault is not None and self.key_file is None:
            raise ConfigError(f"site {self.name}: vault=DIR needs key-file=PATH")


def site_settings(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> SiteSettings:
    """Resolve the site from its node config (or, in simulation, its partition id)."""
    if "data" in node_config or "vault" in node_config:
        return _from(node_config, "", str(node_config.get("site-name", "site")))
    if "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        prefix = simulated_site_key(pid, "")
        if not any(k.startswith(prefix) for k in run_config):
            raise ConfigError(f"run config has no {prefix}* keys for simulated site")
        name = str(run_config.get(simulated_site_key(pid, "name"), f"site-{pid + 1}"))
        return _from(run_config, prefix, name, simulated=True)
    raise ConfigError(
        "node config names no data: set vault=DIR key-file=PATH (or data=PATH), "
        "site-name=NAME, state=DIR"
    )


def _from(
    config: Mapping[str, Any], prefix: str, name: str, *, simulated: bool = False
) -> SiteSettings:
    def get(key: str) -> Path | None:
        return _path(config.get(prefix + key))

    return SiteSettings(
        name=name,
        data=get("data"),
        vault=get("vault"),
        key_file=get("key-file"),
        state=get("state"),
        policy=get("policy"),
        schema=get("schema"),
        simulated=simulated,
        canaries=get("canaries") if simulated else None,
    )


def _path(value: object) -> Path | None:
    return Path(str(value)) if value not in (None, "") else None


@dataclass(frozen=True)
class SplitData:
    """A site's rows, split once into train and validation parts."""

    train: pd.DataFrame
    validation: pd.DataFrame
    image_shape: ImageShape | None = None  # (c, h, w) when the rows are images


def _read(site: SiteSettings) -> tuple[pd.DataFrame, ImageShape | None]:
    """The site's rows, and their image shape when they are images."""
    if site.vault is not None and site.key_file is not None:
        from fedvault.client.data.keys import load_key
        from fedvault.client.data.vault import read_frame, read_manifest

        key = load_key(site.key_file, vault_dir=site.vault)
        frame = read_frame(site.vault, key)
        schema = read_manifest(site.vault, key).schema
        if schema.get("kind") == "images":
            c, h, w = (int(v) for v in schema["shape"])
            return frame, (c, h, w)
        return frame, None
    if site.data is None:
        raise ConfigError(f"site {site.name}: no data configured")
    return load_table(site.data), image_shape_of(site.data)


def data_columns(site: SiteSettings) -> list[str]:
    """The names of the columns the site's rows hold, read from the data file's
    header or the vault's authenticated manifest (no row is read).

    Raises:
        FedVaultError: the header or the manifest cannot be read.
    """
    if site.vault is not None and site.key_file is not None:
        from fedvault.client.data.keys import load_key
        from fedvault.client.data.vault import IDENTIFIER_ROLE, read_manifest

        key = load_key(site.key_file, vault_dir=site.vault)
        columns = read_manifest(site.vault, key).columns
        return [name for name, role in columns if role != IDENTIFIER_ROLE]
    if site.data is None:
        raise ConfigError(f"site {site.name}: no data configured")
    return list(read_layout(site.data).names)


def dataset_version(site: SiteSettings) -> str:
    """SHA-256 of the data file (or of the vault's manifest, which names every
    chunk): what a site's releases and its validation split are tied to.

    Raises :class:`DataError` when the file cannot be read.
    """
    source = site.vault / MANIFEST_NAME if site.vault is not None else site.data
    if source is None:
        raise ConfigError(f"site {site.name}: no data configured")
    try:
        return _file_hash(source, source.stat().st_mtime_ns)
    except OSError as exc:
        raise DataError(f"site {site.name}: cannot read {source}") from exc


@functools.lru_cache(maxsize=16)
def _file_hash(path: Path, mtime: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _load_split(site: SiteSettings, version: str, target: str) -> SplitData:
    frame, shape = _read(site)
    if target not in frame.columns:
        raise DataError(f"site {site.name}: target column {target!r} missing")
    frame = frame[frame[target].notna()]
    # The split is the site's own and fixed per dataset version: a coordinator
    # choosing seeds must not see the same rows in and out of training.
    rng = np.random.default_rng(int(version[:16], 16))
    order = rng.permutation(len(frame))
    n_val = validation_rows(len(frame))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = frame.iloc[np.sort(train_idx)]
    if site.canaries is not None:  # after the split: every canary trains
        train = pd.concat([train, load_table(site.canaries)])
    return SplitData(
        train=train.reset_index(drop=True),
        validation=frame.iloc[np.sort(val_idx)].reset_index(drop=True),
        image_shape=shape,
    )


def load_site_data(site: SiteSettings, *, target: str) -> SplitData:
    """Load and split the site's data (cached per process while it is unchanged).

    The split depends on the dataset version only (:func:`dataset_version`), never
    on the run. A vault is decrypted and verified in full before any row is used;
    a wrong key or a tampered vault raises :class:`IntegrityError` and nothing is
    trained.
    """
    return _load_split(site, dataset_version(site), target)


def select_columns(
    split: SplitData, features: tuple[str, ...], target: str
) -> SplitData | str:
    """The split with only the run's feature columns and the target (every column
    when ``features`` is empty), or why it cannot be (a column the data lacks)."""
    if not features:
        return split
    if target in features:
        return f"the run names its target {target!r} among its features"
    missing = [c for c in features if c not in split.train.columns]
    if missing:
        return f"column {missing[0]!r} of the run's features is not in its data"
    columns = [*features, target]
    return SplitData(
        train=split.train[columns],
        validation=split.validation[columns],
        image_shape=split.image_shape,
    )


def usable(split: SplitData, target: str, *, regression: bool = False) -> str | None:
    """Why the site cannot train, or None when it can."""
    if len(split.train) < MIN_TRAIN_ROWS:
        return f"only {len(split.train)} training rows (< {MIN_TRAIN_ROWS})"
    if split.train[target].nunique() < 2:
        return (
            "a constant target in its training rows"
            if regression
            else "a single class in its training rows"
        )
    return None


def to_tensors(frame: pd.DataFrame, prep: Preprocessing) -> TensorDataset:
    """Apply the federation's preprocessing to rows.

    Returns a dataset of (features, labels): features float32 of shape
    (len(frame), prep.num_features) (images: (len(frame), c, h, w)), labels int64
    class indices of shape (len(frame),) (regression: the standardized target,
    float32). Raises :class:`DataError` when a column the preprocessing
    needs is missing or a label is not in the federation's label set.
    """
    features = torch.from_numpy(prep.transform(frame))
    labels = torch.from_numpy(prep.encode_labels(frame[prep.target]))
    return TensorDataset(features, labels)
