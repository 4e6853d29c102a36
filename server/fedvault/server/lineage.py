"""Model versions: a run that starts from a previous model (``--init-model``), and
the chain of model files behind a model (``fedvault model lineage``).

Every model file the coordinator writes records (keys of the bundle besides the
weights, preprocessing and settings):

- ``version``: 1 for a model trained from scratch, the parent's version + 1 for a
  model trained from a parent;
- ``parent``: ``{"sha256", "version", "path"}`` of the parent model file as it was
  read when the run started, or None;
- ``lineage``: the same record for every ancestor, oldest first, so that the
  chain can be shown even where older files are gone;
- ``received``: what the run received from the sites before training, pooled
  (:func:`fedvault.server.drift.pooled`), for the next version's drift check.

Model files written before these keys existed load as version 1 without a parent.

A parent must have the architecture the new run trains (model and hidden size) and
its preprocessing is kept: the new run's sites must hold the same columns, of the
same kind, with the same target and no label the parent does not know. Anything
else is refused with one line before anything is written where the launcher can
see the data (``fedvault simulate``), else when the sites' summaries arrive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.preprocessing import Preprocessing, merge_summaries, site_summary
from fedvault.server import drift, trained
from fedvault.server.settings import ServerSettings

VERSION, PARENT, LINEAGE, RECEIVED = "version", "parent", "lineage", "received"


@dataclass(frozen=True)
class Parent:
    """A model file a new run starts from, checked and read."""

    path: Path
    sha256: str
    version: int
    prep: Preprocessing
    state_dict: dict[str, torch.Tensor]
    lineage: tuple[dict[str, Any], ...]
    received: dict[str, Any] | None

    def record(self) -> dict[str, Any]:
        """What a child model file says about this parent."""
        return {"sha256": self.sha256, "version": self.version, "path": str(self.path)}


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_parent(path: Path, training: TrainingConfig) -> Parent:
    """Read ``path`` (a run folder or model file) as the start of a new run.

    Raises:
        ConfigError: missing, unreadable or compressed model file, or one whose
            architecture (model, hidden size) is not the one ``training`` trains.
    """
    try:
        model = trained.load(path)
        bundle = trained.read_bundle(model.path)
    except DataError as exc:
        raise ConfigError(f"init-model: {exc}") from None
    if model.compression is not None:
        raise ConfigError(
            f"init-model: {model.path} is a compressed model; start from the "
            "model the run wrote (model.pt)"
        )
    theirs, ours = model.config, training
    if (theirs.model, theirs.hidden) != (ours.model, ours.hidden):
        raise ConfigError(
            f"init-model: {model.path} is a {theirs.model} (hidden {theirs.hidden}); "
            f"this run trains a {ours.model} (hidden {ours.hidden}): use the same "
            "--model and hidden size"
        )
    received = bundle.get(RECEIVED)
    return Parent(
        path=model.path.resolve(),
        sha256=file_hash(model.path),
        version=version_of(bundle),
        prep=model.prep,
        state_dict={k: v.detach().clone() for k, v in model.model.state_dict().items()},
        lineage=tuple(dict(e) for e in bundle.get(LINEAGE) or ()),
        received=None if received is None else dict(received),
    )


def version_of(bundle: Mapping[str, Any]) -> int:
    """A model file's version (1 for files written before versions existed)."""
    return int(bundle.get(VERSION) or 1)


def check_schema(parent: Parent, new: Preprocessing) -> None:
    """Refuse data the parent's preprocessing cannot encode.

    Raises:
        DataError: naming the columns, kinds, target or labels that differ.
    """
    old = parent.prep
    problems = []
    if new.target != old.target:
        problems.append(f"target {new.target!r} is not the model's {old.target!r}")
    for kind, theirs, ours in (
        ("numeric", old.numeric, new.numeric),
        ("categorical", old.categorical, new.categorical),
    ):
        if missing := sorted(set(theirs) - set(ours)):
            problems.append(f"{kind} column(s) missing: {', '.join(missing)}")
        if extra := sorted(set(ours) - set(theirs)):
            problems.append(f"{kind} column(s) the model lacks: {', '.join(extra)}")
    if unknown := sorted(set(new.labels) - set(old.labels)):
        problems.append(f"label(s) the model does not know: {', '.join(unknown)}")
    if problems:
        raise DataError(
            f"init-model {parent.path}: the sites' data does not fit its "
            "preprocessing: " + "; ".join(problems)
        )


def start(
    settings: ServerSettings, prep: Preprocessing, received: Mapping[str, Any]
) -> Parent | None:
    """The parent a run starts from (None without ``init_model``), checked against
    the sites' data (``prep``, as merged from their summaries); writes the drift
    check (``drift.json``) into the run folder.

    Raises:
        ConfigError: the parent cannot be read or has another architecture.
        DataError: the sites' data does not fit the parent's preprocessing.
    """
    if settings.init_model is None:
        return None
    parent = load_parent(settings.init_model, settings.training)
    check_schema(parent, prep)
    shifts = drift.compare(parent.received, parent.prep, received)
    drift.write_drift(settings.out_dir, str(parent.path), shifts)
    return parent


def check_frames(
    path: str | Path, training: TrainingConfig, sites: Sequence[tuple[str, object]]
) -> None:
    """The launcher's early check of ``--init-model`` where it sees the sites'
    rows (``(name, pandas.DataFrame)``; anything else, such as a vault, is left to
    the run): the parent is readable, has the architecture and fits the columns.

    Raises:
        ConfigError: as :func:`load_parent`, or the rows do not fit the parent.
    """
    parent = load_parent(Path(path), training)
    frames = [f for _, f in sites if isinstance(f, pd.DataFrame)]
    if not frames:
        return
    target = parent.prep.target
    if any(target not in f for f in frames):
        raise ConfigError(
            f"init-model: {parent.path} predicts {target!r}; the data has no such "
            "column (use --target)"
        )
    try:
        check_schema(
            parent, merge_summaries([site_summary(f, target) for f in frames], target)
        )
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def bundle_fields(
    parent: Parent | None, received: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The version keys of a model file written by a run from ``parent``."""
    fields: dict[str, Any] = {
        VERSION: 1 if parent is None else parent.version + 1,
        PARENT: None if parent is None else parent.record(),
        LINEAGE: [] if parent is None else [*parent.lineage, parent.record()],
    }
    if received is not None:
        fields[RECEIVED] = dict(received)
    return fields


@dataclass(frozen=True)
class Link:
    """One model in a chain, newest first; ``status`` says whether its file was
    found where recorded and still has the recorded hash."""

    version: int
    sha256: str
    path: str
    status: str

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "path": self.path,
            "status": self.status,
        }


def chain(path: Path) -> list[Link]:
    """The model of ``path`` and its ancestors, newest first.

    Raises:
        DataError: the model file itself is missing, unreadable or not a model.
    """
    model = trained.load(path)
    bundle = trained.read_bundle(model.path)
    links = [Link(version_of(bundle), file_hash(model.path), str(model.path), "this")]
    for record in reversed(list(bundle.get(LINEAGE) or ())):
        links.append(
            Link(
                int(record["version"]),
                str(record["sha256"]),
                str(record["path"]),
                _status(Path(str(record["path"])), str(record["sha256"])),
            )
        )
    return links


def _status(path: Path, sha256: str) -> str:
    if not path.is_file():
        return "missing"
    try:
        return "verified" if file_hash(path) == sha256 else "changed since"
    except OSError:
        return "unreadable"
