"""`fedvault model export`: an ONNX or TorchScript file plus a sidecar JSON that
give fedvault's own predictions in a Python that cannot import fedvault."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (the fixture `run`)

from fedvault.server import export

# A user's script: numpy, pandas, json and the runtime only; importing fedvault fails.
STANDALONE = """
import json, sys
sys.modules["fedvault"] = None
import numpy as np, pandas as pd
model, data, out = sys.argv[1:4]
side = json.load(open(model + ".json"))
frame = pd.read_csv(data)
feed = {}
for spec in side["inputs"]:
    if spec["name"] == "numeric":
        feed["numeric"] = frame[spec["columns"]].to_numpy(dtype=np.float32)
    else:
        codes = []
        for col in spec["columns"]:
            vocab = {v: i for i, v in enumerate(spec["vocabulary"][col])}
            values = frame[col].fillna(spec["missing"][col]).astype(str)
            codes.append([vocab.get(v, -1) for v in values])
        feed["categorical"] = np.array(codes, dtype=np.int64).T
if side["format"] == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(model)
    proba = session.run(None, feed)[0]
else:
    import torch
    loaded = torch.jit.load(model)
    proba = loaded(*(torch.from_numpy(feed[s["name"]]) for s in side["inputs"]))
    proba = proba.detach().numpy()
np.save(out, proba)
"""


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_predicts_like_fedvault_without_fedvault(
    run, tmp_path, monkeypatch, capsys, fmt
):
    folder, test = run
    records = test.drop(columns=["target"])
    records.loc[0, "clinic"] = "west"  # unseen: none of the known categories
    data = tmp_path / "new.csv"
    records.to_csv(data, index=False)
    out = tmp_path / f"model.{fmt}"
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "export", folder, "--format", fmt, "--out", out
    )
    assert code == 0, err
    assert "max |probability difference| vs PyTorch" in stdout
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert [i["name"] for i in side["inputs"]] == ["numeric", "categorical"]
    assert side["output"]["classes"] == ["0", "1"]
    preds = tmp_path / "preds.csv"
    code, _, err = fedvault(
        monkeypatch, capsys, "model", "predict", folder, data, "--out", preds
    )
    assert code == 0, err
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    result = tmp_path / "proba.npy"
    subprocess.run(
        [sys.executable, "-I", script, out, data, result],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    expected = pd.read_csv(preds)[["probability_0", "probability_1"]].to_numpy()
    np.testing.assert_allclose(np.load(result), expected, rtol=0, atol=1e-5)


def test_export_that_does_not_match_writes_nothing(run, tmp_path, monkeypatch, capsys):
    folder, _ = run
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference is small enough
    out = tmp_path / "model.torchscript.pt"
    code, _, err = fedvault(
        monkeypatch,
        capsys,
        "model",
        "export",
        folder,
        "--format",
        "torchscript",
        "--out",
        out,
    )
    assert code == 1
    assert "differs from the PyTorch model" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no-run", "no such run folder or model file"),
        ("corrupted", "not a readable model file"),
        ("sample-missing-column", "missing column(s) 'mean radius'"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    run, tmp_path, monkeypatch, capsys, case, needle
):
    folder, test = run
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [folder]
    if case == "no-run":
        args = [tmp_path / "nowhere"]
    if case == "corrupted":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"PK\x03\x04 not really a zip")
        args = [bad]
    if case == "sample-missing-column":
        data = tmp_path / "sample.csv"
        test.drop(columns=["mean radius"]).to_csv(data, index=False)
        args += ["--data", data]
    code, stdout, err = fedvault(
        monkeypatch, capsys, "model", "export", *args, "--out", out_dir / "m.onnx"
    )
    assert_refused(code, stdout, err, needle)
    assert list(out_dir.iterdir()) == []
