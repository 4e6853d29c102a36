"""What `fedvault simulate` trains on, checked before Flower starts: the source,
the task, the model and the device (no Flower process here)."""

from pathlib import Path

import pytest
import torch
from image_sources import dicom_folder, image_folder, image_manifest

from fedvault.common.data import default_dataset
from fedvault.common.errors import ConfigError, DataError
from fedvault.server import simulate as sim
from fedvault.server.simulate_data import CNN_DEFAULTS

PLUGINS = Path(__file__).parents[1] / "common" / "plugins"


def _prepared(**values):
    return sim.prepare_data(sim.load_config({"sites": 2} | values))


def test_the_cnn_starts_from_its_own_defaults_and_given_settings_win():
    cfg = sim.load_config({"model": "cnn", "lr": 0.05})
    assert cfg.training.lr == 0.05
    assert cfg.training.momentum == CNN_DEFAULTS["momentum"]
    assert sim.load_config({}).training.momentum == 0.0  # the mlp's stay


def test_digits_are_images_of_ten_classes():
    prepared = _prepared(dataset="digits", model="cnn")
    assert prepared.image_shape == (1, 8, 8)
    assert prepared.training.task == "classification"
    rows = sum(len(part) for _, part in prepared.sites) + len(prepared.test)
    assert rows == 1797


@pytest.mark.parametrize("source", ["folder", "manifest", "dicom"])
def test_image_sources_become_image_rows(tmp_path, source):
    data = {
        "folder": lambda: image_folder(tmp_path / "images"),
        "manifest": lambda: image_manifest(tmp_path),
        "dicom": lambda: dicom_folder(tmp_path / "dicom"),
    }[source]()
    prepared = _prepared(
        data=str(data), target="label", model="cnn", **{"image-size": 16}
    )
    channels = prepared.image_shape[0]
    assert prepared.image_shape == (channels, 16, 16)
    frame = prepared.sites[0][1]
    assert set(frame.columns) <= {"pixels", "label"}  # no path, no header value


def test_the_burned_in_dicom_file_is_left_out(tmp_path):
    prepared = _prepared(
        data=str(dicom_folder(tmp_path / "dicom", copies=0)),
        target="label",
        model="cnn",
        sites=1,
        **{"image-size": 8, "min-sites": 1},
    )
    rows = sum(len(part) for _, part in prepared.sites) + len(prepared.test)
    assert rows == 4  # five files written, one flags burned-in annotations


def test_a_numeric_target_is_a_regression_and_can_be_forced_back(tmp_path):
    data = tmp_path / "area.parquet"
    default_dataset().drop(columns=["target"]).to_parquet(data)
    assert _prepared(data=str(data), target="mean area").training.task == "regression"
    with pytest.raises(DataError, match="is no label"):
        _prepared(data=str(data), target="mean area", task="classification")


def test_a_huber_loss_is_unused_when_auto_finds_a_class_label():
    """A study's settings keep regression-loss = huber for a classification target
    under --task auto: unused, as its help says (an explicit classification
    refuses it, tests/common/test_config_data.py)."""
    training = _prepared(**{"regression-loss": "huber"}).training
    assert training.task == "classification"
    assert training.regression_loss == "mse"
    regression = _prepared(target="mean area", **{"regression-loss": "huber"})
    assert regression.training.regression_loss == "huber"


def test_a_model_opacus_cannot_train_is_refused_before_any_round(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    with pytest.raises(ConfigError, match=r"^layer '1' \(_Running\)") as caught:
        _prepared(model="mynets.nets:with_running_stats")
    assert "\n" not in str(caught.value)


def test_a_layer_fixed_for_dp_is_said_where_the_user_sees_it(monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(PLUGINS))
    with caplog.at_level("WARNING"):
        _prepared(model="mynets.nets:build")
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        "model fitted for DP-SGD: layer '1': BatchNorm1d replaced by GroupNorm" in said
    )


def test_an_image_model_on_a_table_is_refused():
    with pytest.raises(ConfigError, match="takes images"):
        _prepared(model="cnn")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    cfg = sim.load_config({"device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA device"):
        sim.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_regression_on_the_embedded_data_declares_its_published_ranges(tmp_path):
    from fedvault.client.data.schema_toml import load_schema
    from fedvault.server.simulate_data import schema_of

    prepared = _prepared(target="mean area")
    assert prepared.config.training.task == "regression"
    opts = prepared.config.options
    path = Path(
        schema_of(opts, prepared.sites, None, tmp_path, regression=True)["schema"]
    )
    columns = {c.name: c for c in load_schema(path).columns}
    public = default_dataset()
    area = columns["mean area"]
    assert area.role.value == "target" and area.type.value == "float"
    assert (area.min, area.max) == (
        public["mean area"].min(),
        public["mean area"].max(),
    )
    assert columns["mean radius"].max == public["mean radius"].max()
    # User data has no published ranges: its sites bound their values with asinh.
    data = tmp_path / "area.parquet"
    public.drop(columns=["target"]).to_parquet(data)
    user = _prepared(data=str(data), target="mean area")
    assert (
        schema_of(user.config.options, user.sites, None, tmp_path, regression=True)
        == {}
    )
