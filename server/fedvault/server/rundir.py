"""The run directory: progress events, checkpoints, reports; written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedvault.common.errors import ConfigError
from fedvault.common.files import atomic_write

PROGRESS_FILE = "progress.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.csv"
PREPROCESSING_FILE = "preprocessing.json"
PRIVACY_FILE = "privacy.json"
PRIVACY_TEXT_FILE = "privacy.txt"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RunDirectory:
    """Files of one run under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def event(self, kind: str, **data: Any) -> None:
        """Append one progress event (read live by the CLI's progress display);
        the file is private (0600), as everything atomic_write writes."""
        line = json.dumps(_clean({"event": kind, "time": time.time(), **data}))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = os.open(self.root / PROGRESS_FILE, flags, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def write_json(self, name: str, obj: Any) -> None:
        text = json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n"
        atomic_write(self.root / name, text.encode())

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.root / name, text.encode())

    def save_model(self, bundle: Mapping[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(dict(bundle), buffer)
        atomic_write(self.root / MODEL_FILE, buffer.getvalue())

    def write_metrics_csv(self, history: Sequence[Mapping[str, Any]]) -> None:
        if not history:
            return
        columns = [k for k, v in history[0].items() if not isinstance(v, dict)]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k) for k in columns})
        atomic_write(self.root / METRICS_FILE, out.getvalue().encode())


def check_new_run_dir(out: Path) -> None:
    """Refuse an ``--out`` that holds a run, is not a folder, or holds other files
    (a run folder is written whole; nobody's files are overwritten in it).

    Raises :class:`ConfigError` naming the folder.
    """
    if (out / SUMMARY_FILE).exists() or (out / PROGRESS_FILE).exists():
        raise ConfigError(f"out: {out} already holds a run; choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"out: {out} is not empty; choose a new or empty folder for the run"
        )


def mark_interrupted(out: Path) -> None:
    """Say in the run folder that the user interrupted the run: whatever the
    ServerApp wrote while it was being stopped (sites failing as their temporary
    files went away) is not what the sites decided."""
    path = out / SUMMARY_FILE
    if path.is_file():
        summary = json.loads(path.read_text())
        summary["status"] = "interrupted"
        summary["stop_reason"] = (
            "interrupted by the user (Ctrl-C or SIGTERM); declines and failures "
            "recorded while the run was being stopped are not the sites' decisions"
        )
        atomic_write(path, (json.dumps(summary, indent=2) + "\n").encode())
    if out.is_dir():
        with (out / PROGRESS_FILE).open("a") as handle:
            handle.write(
                json.dumps({"event": "interrupted", "time": time.time()}) + "\n"
            )


def last_error(out: Path) -> str:
    """The ServerApp's own error event, else the tail of Flower's log."""
    progress = out / PROGRESS_FILE
    if progress.exists():
        for line in reversed(progress.read_text().splitlines()):
            event = json.loads(line)
            if event.get("event") == "error":
                return str(event.get("message"))
    log = out / "flower.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (errors or lines or ["no log"])[-1].strip()[:400] + f" (see {log})"
