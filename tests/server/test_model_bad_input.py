"""The bad-input rule for every command that reads a model: a missing run folder,
a model file of another run, a corrupted model file and a CSV missing a column
each give one clear line, exit 2, and write nothing (no output file, the run
folder unchanged)."""

import json
import shutil

import pytest
import torch
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (`run`)

NEEDLES = {
    "no-run": "no such run folder",
    "another-run": "is not the model of the run",
    "corrupted": "not a readable model file",
    "missing-column": "missing column(s) 'mean radius'",
}

# command -> arguments after the run (DATA: the labelled CSV, OUT: the output)
COMMANDS = {
    "predict": ["DATA", "--out", "OUT"],
    "export": ["--format", "onnx", "--data", "DATA", "--out", "OUT"],
    "compress": ["--prune", "0.5", "--data", "DATA", "--out", "OUT"],
    "explain": ["DATA", "--out", "OUT"],
    "card": ["--data", "DATA"],
    "lineage": [],
    "report": ["--out", "OUT"],
}


def _another_run(folder, root):
    other = root / "other-run"
    shutil.copytree(folder, other)
    bundle = torch.load(other / "model.pt", weights_only=True)
    prep = json.loads(bundle["preprocessing"])
    prep["means"] = [m + 1.0 for m in prep["means"]]
    bundle["preprocessing"] = json.dumps(prep, sort_keys=True)
    torch.save(bundle, other / "model.pt")
    return other


def _corrupted(folder, root):
    copy = root / "corrupted-run"
    shutil.copytree(folder, copy)
    model = copy / "model.pt"
    model.write_bytes(model.read_bytes()[:500])
    return copy


def _snapshot(folder):
    if not folder.is_dir():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    ("command", "case"),
    [
        (command, case)
        for command, args in COMMANDS.items()
        for case in NEEDLES
        if case != "missing-column" or "DATA" in args  # lineage, report: no data
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    run, tmp_path, monkeypatch, capsys, command, case
):
    folder, test = run
    args = COMMANDS[command]
    frame = test.drop(columns=["mean radius"]) if case == "missing-column" else test
    data = tmp_path / "labelled.csv"
    frame.to_csv(data, index=False)
    source = {
        "no-run": tmp_path / "nowhere",
        "another-run": _another_run(folder, tmp_path),
        "corrupted": _corrupted(folder, tmp_path),
    }.get(case, folder)
    if case == "missing-column":  # a copy, so that `card` could write nothing there
        source = tmp_path / "run-copy"
        shutil.copytree(folder, source)
    before = _snapshot(source)
    out = tmp_path / {"predict": "p.csv", "export": "m.onnx", "compress": "m.pt"}.get(
        command, "result"
    )
    argv = [str(data) if a == "DATA" else str(out) if a == "OUT" else a for a in args]
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        *(["model"] if command != "report" else []),
        command,
        source,
        *argv,
    )
    assert_refused(code, stdout, err, NEEDLES[case])
    assert not out.exists()
    assert _snapshot(source) == before
