"""Simulations of image, plug-in and regression runs (real SuperLink, Ray): tiny
runs, each checking what its case adds."""

from pathlib import Path

import pytest
from image_sources import (
    dicom_folder,
    dicom_identifiers,
    image_folder,
    image_manifest,
)

from fedvault.server import simulate as sim

pytestmark = pytest.mark.slow

TINY = {"sites": 2, "rounds": 1, "timeout": 600.0, "batch-size": 16}
PLUGINS = Path(__file__).parents[1] / "common" / "plugins"


def _run(out: Path, **values):
    return sim.run(sim.load_config(TINY | values), out)


def _trained(summary) -> None:
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    for site in summary["sites"].values():
        assert site["rounds_trained"] == 1


def test_digits_cnn_trains_with_dp(tmp_path):
    summary = _run(tmp_path / "out", dataset="digits", model="cnn")
    _trained(summary)
    assert summary["labels"] == [str(d) for d in range(10)]
    assert summary["dp"]["enabled"] is True
    for site in summary["sites"].values():
        assert 0 < site["epsilon_spent"] <= 3.0
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0


def test_an_image_folder_trains_resnet18_without_dp(tmp_path):
    images = image_folder(tmp_path / "images")
    summary = _run(
        tmp_path / "out",
        data=str(images),
        target="label",
        model="resnet18",
        **{"image-size": 16, "dp": False},
    )
    _trained(summary)
    assert summary["labels"] == ["digit0", "digit1", "digit2"]
    assert summary["dp"]["enabled"] is False


def test_a_manifest_trains_the_cnn(tmp_path):
    manifest = image_manifest(tmp_path)
    summary = _run(
        tmp_path / "out",
        data=str(manifest),
        target="label",
        model="cnn",
        **{"image-size": 16},
    )
    _trained(summary)
    assert summary["labels"] == ["digit0", "digit1", "digit2"]


def test_a_dicom_folder_trains_and_no_identifier_reaches_the_run(tmp_path):
    # 13 CT images: a class the launcher declares holds 10 rows or more
    folder = dicom_folder(tmp_path / "dicom", copies=12)
    identifiers = dicom_identifiers(folder)
    assert len(identifiers) >= 4  # the samples do carry names, IDs and UIDs
    out = tmp_path / "out"
    summary = _run(
        out, data=str(folder), target="label", model="cnn", **{"image-size": 16}
    )
    _trained(summary)
    assert summary["labels"] == ["ct", "mr"]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for path in written:
        data = path.read_bytes()
        assert not [i for i in identifiers if i in data], path


def test_a_plugin_model_trains_with_its_batchnorm_fixed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))  # the sites import it too
    state = tmp_path / "state"
    summary = _run(tmp_path / "out", model="mynets.nets:build", state=str(state))
    _trained(summary)
    assert summary["model"] == "mynets.nets:build"
    policy = (state / "site-1" / "site.toml").read_text()
    assert '"mynets.nets:build" = "' in policy  # approved by its module's hash


def test_a_plugin_that_mixes_a_batchs_rows_is_declined_by_every_site(
    tmp_path, monkeypatch
):
    # each row's output depends on the other rows of its batch: per-example
    # clipping would bound nothing, so each site declines before it trains
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    summary = _run(tmp_path / "out", model="mynets.nets:mixes_rows")
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 0
    for site in summary["sites"].values():
        assert site["rounds_trained"] == 0 and site["epsilon_spent"] == 0.0
        [decline] = site["declines"]
        assert decline["reason"] == "policy"
        assert "a row's output depends on the other rows" in decline["detail"]


def test_a_numeric_target_trains_a_regression(tmp_path):
    from fedvault.common.data import default_dataset

    data = tmp_path / "area.parquet"
    default_dataset().drop(columns=["target"]).to_parquet(data)
    # Under DP the sites' summaries are noisy and, undeclared, asinh-bounded
    # (docs/models.md): the inputs' scale is a public one, so it takes 3 rounds.
    summary = _run(tmp_path / "out", data=str(data), target="mean area", rounds=3)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert summary["config"]["task"] == "regression" and summary["labels"] == []
    final = summary["final"]
    assert set(final) == {"mae", "rmse", "r2", "loss", "val_mae", "val_rmse", "val_r2"}
    assert final["r2"] > 0.5 and final["mae"] > 0


def test_a_regression_trains_with_the_huber_loss(tmp_path):
    # The embedded table's `mean area`, its published ranges declared by the
    # simulated sites; the run's regression-loss reaches every site's step.
    summary = _run(
        tmp_path / "out",
        target="mean area",
        model="logreg",
        lr=0.1,
        rounds=2,
        **{"regression-loss": "huber"},
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["config"]["regression-loss"] == "huber"
    assert summary["final"]["r2"] > 0.8
