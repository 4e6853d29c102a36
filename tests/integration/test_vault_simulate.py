"""Demo exports -> `fedvault data import` per site -> `simulate --vaults`."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedvault.client.data_cli import data_app
from fedvault.common.errors import ConfigError
from fedvault.server import simulate as sim
from fedvault.server import trained
from fedvault.server.predict import PREDICTED, predict_frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vaults(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaults")
    runner = CliRunner()
    assert (
        runner.invoke(
            data_app, ["demo", "--sites", "3", "--out", str(root / "demo")]
        ).exit_code
        == 0
    )
    for name in ("vault.key", "secret.key", "other.key"):
        assert runner.invoke(data_app, ["keygen", str(root / name)]).exit_code == 0
    paths = []
    for i in (1, 2, 3):
        vault = root / f"hospital-{i}"
        result = runner.invoke(
            data_app,
            [
                "import",
                str(root / "demo" / f"site-{i}.csv"),
                "--schema",
                str(root / "demo" / "schema.toml"),
                "--vault",
                str(vault),
                "--key",
                str(root / "vault.key"),
                "--secret",
                str(root / "secret.key"),
                "--as-of",
                "2026-11-01",
            ],
        )
        assert result.exit_code == 0, result.output
        paths.append(vault)
    return root, paths


def _cfg(root, paths, key="vault.key", **extra):
    return sim.load_config(
        {
            "vaults": ",".join(map(str, paths)),
            "key": str(root / key),
            "target": "diagnosis",
            "rounds": 2,
            "timeout": 600.0,
            **extra,
        }
    )


def test_sites_train_from_their_vaults_with_dp(vaults, tmp_path):
    root, paths = vaults
    summary = sim.run(_cfg(root, paths), tmp_path / "run")
    assert summary["rounds_completed"] == 2
    assert sorted(summary["sites"]) == ["hospital-1", "hospital-2", "hospital-3"]
    assert summary["final"]["accuracy"] is None  # no central data with vaults
    # The sites' validation counts are noised for their share of epsilon (~5%),
    # far too noisy on ~15 rows to judge the model by: the released model is
    # judged on the sites' own exports instead (rows it trained on, mostly).
    model = trained.load(tmp_path / "run")
    demo = pd.concat(pd.read_csv(root / "demo" / f"site-{i}.csv") for i in (1, 2, 3))
    got = predict_frame(model, demo, source="demo").table[PREDICTED].to_numpy()
    accuracy = float(
        (got.astype(str) == demo["diagnosis"].astype(str).to_numpy()).mean()
    )
    majority = float(demo["diagnosis"].value_counts(normalize=True).max())
    assert accuracy > max(0.7, majority + 0.05), (accuracy, majority)
    for site in summary["sites"].values():
        assert 0 < site["epsilon_spent"] <= 3.0
    prep = (tmp_path / "run" / "preprocessing.json").read_text()
    for identifier in ("patient_id", "national_id", "email", "phone", "name"):
        assert f'"{identifier}"' not in prep


def test_a_wrong_key_is_refused_before_flower_starts(vaults, tmp_path):
    """The launcher asks each vault (through the site's own inspect) before
    Flower starts: a key that opens none of them is one line naming the vault."""
    root, paths = vaults
    with pytest.raises(ConfigError, match=r"cannot read the manifest of .* key"):
        sim.run(_cfg(root, paths, key="other.key"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_target_comes_from_the_vaults_schema(vaults, tmp_path):
    root, paths = vaults
    cfg = _cfg(root, paths)
    wrong = dataclasses.replace(
        cfg, options=dataclasses.replace(cfg.options, target="outcome")
    )
    with pytest.raises(ConfigError, match="their schema declares 'diagnosis'"):
        sim.run(wrong, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_delta_not_below_one_over_n_is_refused_before_flower_starts(
    vaults, tmp_path, monkeypatch, capsys
):
    import sys

    from fedvault.common.cli import main

    root, paths = vaults
    out = tmp_path / "delta"
    args = ["--vaults", ",".join(map(str, paths)), "--key", str(root / "vault.key")]
    args += ["--target", "diagnosis", "--delta", "0.4", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["fedvault", "simulate", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "delta: 0.4 is not below 1/n" in err and "rows)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written, Flower never started
