"""`fedvault model explain`: permutation importance of every input column on a
labelled file, as a ranked table, JSON and a PNG chart, saying what it was
computed on."""

import json

import matplotlib.image
import numpy as np
import pytest
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (`run`)


def test_importance_ranks_every_column_on_the_given_file(
    run, tmp_path, monkeypatch, capsys
):
    folder, test = run
    frame = test.copy()
    frame["mean smoothness"] = 0.1  # a constant column cannot matter
    data = tmp_path / "labelled.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "explained"
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        "model",
        "explain",
        folder,
        data,
        "--repeats",
        "3",
        "--out",
        out,
    )
    assert code == 0, err
    assert f"on {len(test)} labelled rows of {data}" in stdout
    assert f"Computed on {data} only" in stdout
    result = json.loads((out / "importance.json").read_text())
    assert result["computed_on"] == str(data) and result["rows"] == len(test)
    columns = result["columns"]
    assert len(columns) == test.shape[1] - 1  # every column but the label, once
    assert {c["column"] for c in columns} == set(test.columns) - {"target"}
    means = [c["mean"] for c in columns]
    assert means == sorted(means, reverse=True) and means[0] > 0
    constant = next(c for c in columns if c["column"] == "mean smoothness")
    assert constant["mean"] == 0 and constant["std"] == 0
    image = matplotlib.image.imread(out / "importance.png")
    assert image.shape[0] > 100 and np.std(image[..., :3]) > 0.05  # not blank


def test_the_baseline_is_the_models_score_on_the_file(
    run, tmp_path, monkeypatch, capsys
):
    folder, test = run
    data = tmp_path / "labelled.parquet"
    test.to_parquet(data, index=False)
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        "model",
        "explain",
        folder,
        data,
        "--repeats",
        "1",
        "--out",
        tmp_path / "x",
        "--format",
        "json",
    )
    assert code == 0, err
    summary = json.loads((folder / "summary.json").read_text())
    assert json.loads(stdout)["baseline"] == pytest.approx(
        summary["final"]["accuracy"], abs=1e-12
    )


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unlabelled", "no label column 'target'"),
        ("missing-column", "missing column(s) 'mean radius'"),
        ("unknown-label", "labels not in the federation's label set"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    run, tmp_path, monkeypatch, capsys, case, needle
):
    folder, test = run
    frame = {
        "unlabelled": test.drop(columns=["target"]),
        "missing-column": test.drop(columns=["mean radius"]),
        "unknown-label": test.assign(target=7),
    }[case]
    data = tmp_path / "labelled.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "explained"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "explain", folder, data, "--out", out
    )
    assert_refused(code, stdout, err, needle)
    assert not out.exists()
