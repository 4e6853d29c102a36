"""`fedvault model` and `fedvault report` on a regression run of `fedvault
simulate` (the embedded data's `mean area` as the target, 2 sites, 2 rounds under
DP), made once for the module."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from trained_run import assert_refused, fedvault

from fedvault.common.data import default_dataset
from fedvault.server import simulate as sim
from fedvault.server import trained

pytestmark = pytest.mark.slow

TARGET = "mean area"


@pytest.fixture(scope="module", name="run")
def run_fixture(tmp_path_factory):
    """The run folder and a labelled file of 150 of the records."""
    root = tmp_path_factory.mktemp("regression")
    frame = default_dataset().drop(columns=["target"])
    data = root / "area.parquet"
    frame.to_parquet(data)
    settings = {"sites": 2, "rounds": 2, "timeout": 600.0, "data": str(data)}
    summary = sim.run(sim.load_config(settings | {"target": TARGET}), root / "run")
    assert summary["config"]["task"] == "regression"
    labelled = root / "labelled.csv"
    frame.sample(150, random_state=1).to_csv(labelled, index=False)
    return root / "run", labelled


def _predicted(monkeypatch, capsys, folder, data):
    code, stdout, err = fedvault(monkeypatch, capsys, "model", "predict", folder, data)
    assert code == 0, err
    return pd.read_csv(io.StringIO(stdout))["predicted"].to_numpy()


def test_predict_writes_values_in_the_targets_units(run, monkeypatch, capsys):
    folder, labelled = run
    frame = pd.read_csv(labelled)
    predicted = _predicted(monkeypatch, capsys, folder, labelled)
    assert len(predicted) == len(frame)
    truth = frame[TARGET].to_numpy()
    # in the target's units (areas of hundreds), and better than the mean
    assert 100 < predicted.mean() < 2000
    r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 > 0
    # the card measures the same predictions: its MAE is theirs
    code, _, err = fedvault(
        monkeypatch, capsys, "model", "card", folder, "--data", labelled
    )
    assert code == 0, err
    test = json.loads((folder / "model_card.json").read_text())["metrics"]["test_split"]
    assert test["mae"] == pytest.approx(np.abs(predicted - truth).mean())
    assert test["r2"] == pytest.approx(r2)
    for key in ("mae", "rmse", "r2"):
        low, high = test[f"{key}_ci95"]
        assert low <= test[key] <= high
        assert test[f"{key}_ci_method"].startswith("percentile bootstrap")
    card = (folder / "model_card.md").read_text()
    assert (
        "| MAE |" in card and "| R² |" in card and "regression of 'mean area'" in card
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_returns_the_value_and_checks_itself(
    run, fmt, tmp_path, monkeypatch, capsys
):
    folder, labelled = run
    target = tmp_path / f"model.{fmt}"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "export", folder, "--format", fmt,
        "--out", target, "--data", labelled,
    )  # fmt: skip
    assert code == 0, err
    assert "max |value difference, in standard deviations of the target|" in stdout
    side = json.loads(target.with_name(target.name + ".json").read_text())
    assert side["output"]["name"] == "value" and side["task"] == "regression"
    frame = pd.read_csv(labelled)
    numeric = frame[side["inputs"][0]["columns"]].to_numpy(dtype=np.float32)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target))
        got = session.run(None, {"numeric": numeric})[0][:, 0]
    else:
        import torch

        with torch.no_grad():
            out = torch.jit.load(str(target))(torch.from_numpy(numeric))
        got = out[:, 0].numpy()
    expected = _predicted(monkeypatch, capsys, folder, labelled)
    std = trained.load(folder).prep.target_std
    np.testing.assert_allclose(got / std, expected / std, atol=1e-5)


def test_compress_reports_r2_and_mae_change(run, tmp_path, monkeypatch, capsys):
    folder, labelled = run
    target = tmp_path / "small.pt"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "compress", folder, "--prune", "0.5",
        "--data", labelled, "--out", target, "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    variants = json.loads(stdout)["variants"]
    base = variants[0]
    assert base["accuracy"] is None and base["auc"] is None
    predicted = _predicted(monkeypatch, capsys, folder, labelled)
    truth = pd.read_csv(labelled)[TARGET].to_numpy()
    assert base["mae"] == pytest.approx(np.abs(predicted - truth).mean(), rel=1e-5)
    for variant in variants[1:]:
        assert abs(variant["r2"] - base["r2"]) < 0.2
    # the compressed file predicts values too
    small = _predicted(monkeypatch, capsys, target, labelled)
    assert np.abs(small - predicted).mean() < 0.2 * np.abs(predicted - truth).mean()


def test_explain_ranks_columns_by_r2_drop(run, tmp_path, monkeypatch, capsys):
    folder, labelled = run
    out = tmp_path / "explain"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "explain", folder, labelled,
        "--repeats", "2", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "r2 drop" in stdout
    data = json.loads((out / "importance.json").read_text())
    assert data["metric"] == "r2" and data["rows"] == 150
    predicted = _predicted(monkeypatch, capsys, folder, labelled)
    truth = pd.read_csv(labelled)[TARGET].to_numpy()
    r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert data["baseline"] == pytest.approx(r2, rel=1e-5)
    # the area-like columns carry the target: one of them ranks first
    assert "area" in data["columns"][0]["column"]
    assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG"


def test_report_shows_regression_metrics_per_round(run, tmp_path, monkeypatch, capsys):
    folder, _ = run
    out = tmp_path / "report.html"
    code, _, err = fedvault(monkeypatch, capsys, "report", folder, "--out", out)
    assert code == 0, err
    html = out.read_text()
    assert "R², MAE and RMSE per round" in html and "<th>r2</th>" in html
    assert "<th>mae</th>" in html and "final test R²" in html


def test_bad_inputs_for_regression_are_one_line_and_write_nothing(
    run, tmp_path, monkeypatch, capsys
):
    folder, labelled = run
    unlabelled = tmp_path / "no-target.csv"
    pd.read_csv(labelled).drop(columns=[TARGET]).to_csv(unlabelled, index=False)
    target = tmp_path / "c.pt"
    args = ["model", "compress", folder, "--data", unlabelled, "--out", target]
    assert_refused(*fedvault(monkeypatch, capsys, *args), "no label column 'mean area'")
    args = ["model", "explain", folder, labelled, "--metric", "auc"]
    assert_refused(
        *fedvault(monkeypatch, capsys, *args, "--out", tmp_path / "x"),
        "auc does not measure a regression model",
    )
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    args = ["model", "predict", folder, images.parent, "--out", tmp_path / "p.csv"]
    assert_refused(*fedvault(monkeypatch, capsys, *args), "reads tables")
    assert not target.exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "p.csv").exists()
