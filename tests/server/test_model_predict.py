"""`fedvault model predict` on a real run folder: one row per record, the run's own
preprocessing, and bad input refused with one line, exit 2, nothing written."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (the fixture `run`)


def test_predictions_reproduce_the_runs_test_accuracy(
    run, tmp_path, monkeypatch, capsys
):
    folder, test = run
    data = tmp_path / "new.csv"
    test.drop(columns=["target"]).to_csv(data, index=False)
    out = tmp_path / "preds.csv"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "predict", folder, data, "--out", out
    )
    assert code == 0, err
    assert f"Predicted {len(test)} rows" in stdout
    # the test rows hold missing values; they are imputed and said so
    assert "missing value(s)" in err
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["predicted", "probability_0", "probability_1"]
    assert len(preds) == len(test)
    proba = preds[["probability_0", "probability_1"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (preds["predicted"] == proba.argmax(axis=1)).all()
    accuracy = float((preds["predicted"] == test["target"]).mean())
    summary = json.loads((folder / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["final"]["accuracy"], abs=1e-12)


def test_unseen_category_is_noted_or_refused(run, tmp_path, monkeypatch, capsys):
    folder, test = run
    frame = test.head(5).copy()
    frame.loc[0, "clinic"] = "west"
    data = tmp_path / "new.parquet"
    frame.to_parquet(data, index=False)
    code, stdout, err = fedvault(monkeypatch, capsys, "model", "predict", folder, data)
    assert code == 0
    assert "'clinic': 1 value(s) in categories not seen in training ('west')" in err
    assert len(pd.read_csv(io.StringIO(stdout))) == 5
    code, _, err = fedvault(
        monkeypatch, capsys, "model", "predict", folder, data, "--strict"
    )
    assert code == 2 and "'west'" in err


def _copy_with_model_of_another_run(folder, tmp_path):
    other = tmp_path / "other-run"
    shutil.copytree(folder, other)
    bundle = torch.load(other / "model.pt", weights_only=True)
    prep = json.loads(bundle["preprocessing"])
    prep["means"] = [m + 1.0 for m in prep["means"]]
    bundle["preprocessing"] = json.dumps(prep, sort_keys=True)
    torch.save(bundle, other / "model.pt")
    return other


def _truncated(folder, tmp_path):
    file = tmp_path / "model.pt"
    file.write_bytes((folder / "model.pt").read_bytes()[:500])
    return file


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no-run", "no such run folder or model file"),
        ("another-run", "is not the model of the run"),
        ("corrupted", "not a readable model file"),
        ("missing-column", "missing column(s) 'mean radius'"),
        ("text-in-numbers", "'mean area': 3 value(s) are not numbers (e.g. 'high')"),
        ("not-a-model", "not a fedvault model file"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    run, tmp_path, monkeypatch, capsys, case, needle
):
    folder, test = run
    frame = test.drop(columns=["target"]).head(3)
    if case == "missing-column":
        frame = frame.drop(columns=["mean radius"])
    if case == "text-in-numbers":
        frame["mean area"] = "high"
    data = tmp_path / "new.csv"
    frame.to_csv(data, index=False)
    source = {
        "no-run": tmp_path / "nowhere",
        "another-run": _copy_with_model_of_another_run(folder, tmp_path),
        "corrupted": _truncated(folder, tmp_path),
    }.get(case, folder)
    if case == "not-a-model":
        source = tmp_path / "weights.pt"
        torch.save({"w": torch.zeros(2)}, source)
    out = tmp_path / "preds.csv"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "predict", source, data, "--out", out
    )
    assert_refused(code, stdout, err, needle)
    assert not out.exists()
