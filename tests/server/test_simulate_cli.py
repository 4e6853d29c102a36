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


def test_no_dp_on_a_state_whose_policies_forbid_it(monkeypatch, capsys, tmp_path):
    """A site's existing policy decides: --no-dp on a --state whose policy does not
    allow non-private training stops before anything is written or started."""
    state = tmp_path / "state" / "site-1"
    state.mkdir(parents=True)
    policy = '[privacy]\ndataset-id = "bc"\nepsilon-max = 3.0\ndelta = 1e-5\n'
    (state / "site.toml").write_text(policy)
    out = tmp_path / "run"
    code, err = _run(
        monkeypatch,
        capsys,
        "--no-dp",
        "--state",
        str(tmp_path / "state"),
        "--out",
        str(out),
    )
    assert code == 2 and "site-1" in err and "allow-non-private" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert (state / "site.toml").read_text() == policy


@pytest.mark.parametrize("dp", [True, False])
def test_simulated_policies_allow_non_private_only_for_no_dp(tmp_path, dp):
    from fedvault.client.policy import load_policy
    from fedvault.server import simulate as sim

    prepared = sim.prepare_data(sim.load_config({"sites": 2, "dp": dp}))
    folders = sim.site_states(prepared, tmp_path)
    for folder in folders:
        assert load_policy(folder / "site.toml").allow_non_private is (not dp)


def test_a_state_folder_that_cannot_be_made_is_one_line_and_no_out(tmp_path):
    """--state /proc/nope: one line naming the path, exit 2, no run folder."""
    import subprocess
    import sys
    from pathlib import Path

    fedvault = str(Path(sys.executable).parent / "fedvault")
    done = subprocess.run(
        [fedvault, "simulate", "--state", "/proc/nope", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: No such file or directory: /proc/nope"
    assert not (tmp_path / "o").exists()


def _fedvault(*args):
    import subprocess
    import sys
    from pathlib import Path

    fedvault = str(Path(sys.executable).parent / "fedvault")
    return subprocess.run(
        [fedvault, *args], capture_output=True, text=True, timeout=300
    )


def test_fewer_sites_than_min_sites_is_refused_before_flower(tmp_path):
    """--sites 1 (min-sites 2) used to wait for a second site until the timeout."""
    done = _fedvault("simulate", "--sites", "1", "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    assert "min-sites: 2, but only 1 site(s) hold data" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_folder_holding_other_files_is_not_a_run_folder(tmp_path):
    """--out on a folder of the user's own files would overwrite them."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.pt").write_bytes(b"my own model")
    done = _fedvault("simulate", "--out", str(mine))
    assert done.returncode == 2, done.stderr
    assert "is not empty" in done.stderr
    assert (mine / "model.pt").read_bytes() == b"my own model"
