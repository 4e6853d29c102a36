"""Bad input to `fedvault simulate`: one clear line, non-zero exit, nothing written."""

import sys

import pandas as pd
import pytest

from fedvault.common.cli import main


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedvault", "simulate", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.fixture
def one_class_csv(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"x": [1, 2, 3], "y": [1, 1, 1]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sites", "0"], "sites"),
        (["--sites", "1000"], "1000 sites"),
        (["--data", "/nonexistent/x.csv"], "not found"),
        (["--target", "nope"], "'nope' not found"),
        (["--epsilon", "0"], "epsilon"),
        (["--epsilon", "-2"], "epsilon"),
        (["--delta", "1"], "delta"),
        (["--delta", "0.5"], "delta"),
        (["--partition", "shards"], "partition"),
        (["--strategy", "fedsgd"], "strategy"),
    ],
)
def test_bad_input_fails_cleanly(monkeypatch, capsys, tmp_path, args, needle):
    out = tmp_path / "run"
    code, err = _run(monkeypatch, capsys, *args, "--out", str(out))
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_one_class_target(monkeypatch, capsys, tmp_path, one_class_csv):
    out = tmp_path / "run"
    code, err = _run(
        monkeypatch,
        capsys,
        "--data",
        str(one_class_csv),
        "--target",
        "y",
        "--out",
        str(out),
    )
    assert code == 2 and "1 class" in err and not out.exists()


def test_unknown_config_key(monkeypatch, capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("rounds = 2\nlearning-rate = 0.1\n")
    out = tmp_path / "run"
    code, err = _run(monkeypatch, capsys, "--config", str(config), "--out", str(out))
    assert code == 2 and "learning-rate" in err and not out.exists()


def test_existing_run_is_not_overwritten(monkeypatch, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, err = _run(monkeypatch, capsys, "--out", str(out))
    assert code == 2 and "already holds a run" in err
    assert (out / "summary.json").read_text() == "{}"
