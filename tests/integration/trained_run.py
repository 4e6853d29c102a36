"""A small but real run folder for the tests of ``fedvault model`` and ``fedvault
report``: the whole round loop (Federation) with the real fedvault ClientApp and
DP-SGD at 3 sites over the in-process grid of tests/support, on the embedded
breast-cancer data plus one categorical column with a few missing values.

One run is made per test session (about 10 s) and shared, read-only, by every
module that asks for it."""

import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from flwr.supercore.task_identity import TaskIdentity
from local_grid import LocalGrid, contexts_for, site_run_config

from fedvault.client.app import app as client_app
from fedvault.common.cli import main
from fedvault.common.data import default_dataset
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [11, 22, 33]


def records() -> pd.DataFrame:
    """The embedded data with a categorical column ``clinic`` that carries signal
    and a few missing values in it and in ``mean texture``."""
    frame = default_dataset()
    rng = np.random.default_rng(0)
    clinic = np.where(frame["target"] == 1, "north", "south").astype(object)
    flip = rng.random(len(frame)) < 0.3
    clinic[flip] = rng.choice(["east", "north", "south"], size=int(flip.sum()))
    frame.insert(0, "clinic", clinic)
    frame.loc[frame.index[::37], "clinic"] = None
    frame.loc[frame.index[::41], "mean texture"] = np.nan
    return frame


def make_run(root, *, rounds=2, extra=None, frame=None, **training):
    """Run a federation into ``root/out``; returns the run folder. The in-process
    grid's own run config, with the data files replaced by :func:`records` (or
    ``frame``) split the same way (held-out test rows in ``root/test.parquet``);
    ``extra`` overrides run-config keys (e.g. ``init-model``, a site's state)."""
    run_config = site_run_config(root, NODES, rounds=rounds, **training)
    run_config |= extra or {}
    frame = records() if frame is None else frame
    _declare_clinic(run_config)
    test = frame.sample(frac=0.2, random_state=0)
    test.to_parquet(run_config["test-data"], index=False)
    rest = frame.drop(test.index).sample(frac=1.0, random_state=0)
    for pid, rows in enumerate(np.array_split(np.arange(len(rest)), len(NODES))):
        rest.iloc[rows].to_parquet(run_config[f"site.{pid}.data"], index=False)
    with pytest.MonkeyPatch.context() as patch:
        # The ServerApp runtime sets who "we" are; new instruction messages need it.
        for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        grid = LocalGrid(client_app, contexts_for(NODES, run_config))
        Federation(grid, ServerSettings.from_run_config(run_config)).run()
    return root / "out"


def _declare_clinic(run_config):
    """The sites' schema contract declares the clinics: an undeclared category would
    leave a site only past a noisy-count threshold (docs/privacy.md)."""
    schema = Path(run_config["site.0.schema"])
    doc = tomllib.loads(schema.read_text())
    doc["columns"]["clinic"] = {
        "type": "category",
        "role": "feature",
        "categories": ["east", "north", "south"],
    }
    schema.write_text(tomli_w.dumps(doc))


@pytest.fixture(scope="module", name="run")
def run_fixture(tmp_path_factory):
    """The session's run folder and its held-out test rows (made on first use)."""
    root = tmp_path_factory.getbasetemp() / "fedvault-trained-run"
    out = root / "out"
    if not (out / "summary.json").exists():
        make_run(root)
    return out, pd.read_parquet(root / "test.parquet")


def fedvault(monkeypatch, capsys, *args):
    """Run the ``fedvault`` entry point; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fedvault", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code, stdout, err, needle):
    """Bad input: exit 2, one ``error:`` line naming the problem, no output."""
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert stdout == ""
