"""`fedvault model compress`: int8 quantization and magnitude pruning with PyTorch's
own tools, one table of size and accuracy, and a model file the other commands
read."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (the fixture `run`)

from fedvault.server import compress, trained


def test_int8_and_pruning_shrink_the_model_and_keep_its_accuracy(
    run, tmp_path, monkeypatch, capsys
):
    folder, test = run
    data = tmp_path / "labelled.csv"
    test.to_csv(data, index=False)
    out = tmp_path / "small.pt"
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        "model",
        "compress",
        folder,
        "--quantize",
        "int8",
        "--prune",
        "0.5",
        "--data",
        data,
        "--out",
        out,
        "--format",
        "json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    rows = {r["name"]: r for r in report["variants"]}
    assert list(rows) == ["as trained", "pruned 50%", "int8", "int8 + pruned 50%"]
    summary = json.loads((folder / "summary.json").read_text())
    # the same model on the same held-out rows as the run's own last evaluation
    assert rows["as trained"]["accuracy"] == pytest.approx(
        summary["final"]["accuracy"], abs=1e-12
    )
    both, base = rows["int8 + pruned 50%"], rows["as trained"]
    # the goal: int8 + 50 % pruning at <= 0.3x the size (saved sparse)
    assert both["size"] <= 0.3 * base["size"]
    assert both["gzipped"] < 0.3 * base["gzipped"]
    assert rows["int8"]["size"] > 0.4 * base["size"]  # int8 alone is dense
    assert abs(both["accuracy"] - base["accuracy"]) <= 0.05
    assert report["evaluated_on"] == f"{len(test)} labelled rows of {data}"

    small = trained.load(out)
    assert small.compression == {
        "quantize": "int8",
        "prune": 0.5,
        "format": "sparse-int8",
    }
    bundle = torch.load(out, weights_only=True)
    assert bundle["state_dict"] == {} and bundle["sparse"]["blob"].dtype == torch.uint8
    assert (
        bundle["version"]
        == torch.load(folder / "model.pt", weights_only=True)["version"]
    )
    # decoded exactly: the int8 weights of compressing the model in memory
    expected, _ = compress.compress(trained.load(folder), quantize="int8", prune=0.5)
    for i in (0, 2):
        weight = small.model[i].weight()
        assert torch.equal(weight.int_repr(), expected[i].weight().int_repr())
        assert weight.q_scale() == expected[i].weight().q_scale()
        assert torch.equal(small.model[i].bias(), expected[i].bias())
    weight = small.model[0].weight().dequantize()
    assert float((weight == 0).float().mean()) >= 0.5
    # the compressed file predicts with the accuracy the table reported
    records = tmp_path / "records.csv"
    test.drop(columns=["target"]).to_csv(records, index=False)
    preds = tmp_path / "preds.csv"
    code, _, err = fedvault(
        monkeypatch, capsys, "model", "predict", out, records, "--out", preds
    )
    assert code == 0, err
    predicted = pd.read_csv(preds)["predicted"].to_numpy()
    assert np.mean(predicted == test["target"].to_numpy()) == pytest.approx(
        both["accuracy"], abs=1e-12
    )


def test_sizes_only_without_labelled_file(run, tmp_path, monkeypatch, capsys):
    folder, _ = run
    out = tmp_path / "small.pt"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "compress", folder, "--out", out
    )
    assert code == 0, err
    assert "int8" in stdout and "No --data: sizes only" in stdout
    with compress.quiet_quantized():  # a dense int8 state dict
        bundle = torch.load(out, weights_only=True)
    assert bundle["compression"] == {"quantize": "int8", "prune": 0.0}


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("prune-too-much", "prune: the share of weights to zero must be in [0, 1)"),
        ("nothing-to-do", "nothing to do"),
        ("unlabelled", "no label column 'target'"),
        ("compressed-twice", "already compressed"),
        ("corrupted", "not a readable model file"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    run, tmp_path, monkeypatch, capsys, case, needle
):
    folder, test = run
    data = tmp_path / "labelled.csv"
    frame = test.drop(columns=["target"]) if case == "unlabelled" else test
    frame.to_csv(data, index=False)
    source, args = folder, ["--prune", "0.5", "--data", data]
    if case == "prune-too-much":
        args = ["--prune", "1.5"]
    if case == "nothing-to-do":
        args = ["--quantize", "none"]
    if case in ("compressed-twice", "corrupted"):
        source = tmp_path / "given.pt"
        code, _, err = fedvault(
            monkeypatch, capsys, "model", "compress", folder, "--out", source
        )
        assert code == 0, err
        if case == "corrupted":
            source.write_bytes(source.read_bytes()[:-100])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        "model",
        "compress",
        source,
        *args,
        "--out",
        out_dir / "small.pt",
    )
    assert_refused(code, stdout, err, needle)
    assert list(out_dir.iterdir()) == []
