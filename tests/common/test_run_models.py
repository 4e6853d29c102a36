"""The wiring of images, regression and any model into a run: summaries, the
preprocessing the coordinator merges, and the model both sides build from it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.evaluation import evaluate
from fedvault.common.image_table import (
    PIXELS,
    image_frame,
    image_shape_of,
    pixels_array,
    write_image_table,
)
from fedvault.common.images import digits_dataset
from fedvault.common.models import build_run_model, infer_task, run_task
from fedvault.common.preprocessing import Preprocessing, merge_summaries, site_summary
from fedvault.common.wire import summary_from_bytes, summary_to_bytes

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture(scope="module")
def digits():
    images = digits_dataset()
    return image_frame(images, images.label)


def _prep(frames, target, **kwargs):
    summaries = [
        summary_from_bytes(summary_to_bytes(site_summary(f, target, **kwargs)))
        for f in frames
    ]
    return merge_summaries(summaries, target)


def test_image_rows_round_trip_through_parquet(digits, tmp_path):
    path = tmp_path / "site.parquet"
    write_image_table(digits.head(10), (1, 8, 8), path)
    assert image_shape_of(path) == (1, 8, 8)
    back = pd.read_parquet(path)
    pixels = pixels_array(back[PIXELS], (1, 8, 8))
    assert torch.equal(torch.from_numpy(pixels), digits_dataset().images[:10])
    plain = tmp_path / "table.parquet"
    digits.drop(columns=[PIXELS]).to_parquet(plain)
    assert image_shape_of(plain) is None


def test_a_pixels_row_of_another_size_is_refused(digits):
    with pytest.raises(DataError, match="shape"):
        pixels_array(digits[PIXELS].head(3), (1, 4, 4))


def test_image_summaries_hold_counts_and_shape_only(digits):
    summary = site_summary(digits, "target", image_shape=(1, 8, 8))
    assert summary["numeric"] == {} and summary["categorical"] == {}
    assert sum(summary["labels"].values()) == len(digits)
    halves = [digits.iloc[:900], digits.iloc[900:]]
    prep = _prep(halves, "target", image_shape=(1, 8, 8))
    assert prep.image_shape == (1, 8, 8) and prep.num_classes == 10
    assert prep.transform(digits.head(4)).shape == (4, 1, 8, 8)
    assert Preprocessing.from_json(prep.to_json()) == prep


def test_sites_with_other_image_shapes_are_refused(digits):
    a = site_summary(digits, "target", image_shape=(1, 8, 8))
    b = site_summary(digits, "target", image_shape=(1, 16, 16))
    with pytest.raises(DataError, match="image shape"):
        merge_summaries([a, b], "target")


def test_a_regression_target_is_summarized_by_sums_not_values():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [10.5, 20.5, 30.5, 40.5]})
    summary = site_summary(frame, "y", regression=True)
    assert summary["labels"] == {}  # no target value leaves the site
    prep = _prep([frame.iloc[:2], frame.iloc[2:]], "y", regression=True)
    assert prep.regression and prep.labels == ()
    assert prep.target_mean == pytest.approx(25.5)
    assert prep.target_std == pytest.approx(np.std([10.5, 20.5, 30.5, 40.5]))
    y = prep.encode_labels(frame["y"])
    assert y.dtype == np.float32 and y.mean() == pytest.approx(0.0, abs=1e-6)
    assert Preprocessing.from_json(prep.to_json()) == prep


def test_sites_disagreeing_on_the_task_are_refused():
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [1.5, 2.5]})
    with pytest.raises(DataError, match="task"):
        merge_summaries(
            [site_summary(frame, "y", regression=True), site_summary(frame, "y")], "y"
        )


@pytest.mark.parametrize(
    ("values", "task"),
    [
        ([0, 1, 1, 0], "classification"),
        (list(range(10)), "classification"),
        ([1.5, 2.0, 3.0], "regression"),
        (list(range(50)), "regression"),
        (["a", "b"], "classification"),
    ],
)
def test_the_task_is_inferred_from_the_target(values, task):
    assert infer_task(pd.Series(values)) == task


def test_both_sides_build_the_same_cnn_for_digits(digits):
    prep = _prep([digits], "target", image_shape=(1, 8, 8))
    a, _ = build_run_model("cnn", prep, hidden=16, dp=True)
    b, _ = build_run_model("cnn", prep, hidden=16, dp=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert a(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_a_plugin_with_batchnorm_is_fixed_and_said(plugins):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "z": [0.0, 1.0, 0.0], "y": [0, 1, 0]})
    prep = _prep([frame], "y")
    model, notes = build_run_model("mynets.nets:build", prep, hidden=8, dp=True)
    assert notes == ("layer '1': BatchNorm1d replaced by GroupNorm",)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_a_model_opacus_cannot_handle_gets_one_line_naming_the_layer(plugins):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with pytest.raises(ConfigError, match=r"^layer '1' \(_Running\)") as caught:
        build_run_model(
            "mynets.nets:with_running_stats", _prep([frame], "y"), hidden=8, dp=True
        )
    assert "\n" not in str(caught.value)


def test_regression_metrics_are_in_the_targets_units():
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [100.0, 200.0, 300.0, 400.0]})
    prep = _prep([frame], "y", regression=True)
    model, _ = build_run_model("logreg", prep, hidden=8, dp=False)
    assert run_task(prep) == "regression"
    with torch.no_grad():  # y is linear in x: standardized, they are equal
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    x = torch.from_numpy(prep.transform(frame))
    y = torch.from_numpy(prep.encode_labels(frame["y"]))
    scale = (prep.target_mean, prep.target_std)
    m = evaluate(model, x, y, num_classes=0, task="regression", target_scale=scale)
    assert m.r2 == pytest.approx(1.0) and m.mae == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(
    ("model", "ok"),
    [("cnn", True), ("mypkg.nets:build", True), ("vgg", False), ("a:b:c", False)],
)
def test_the_model_setting_takes_builtins_and_plugin_names(model, ok):
    if ok:
        assert TrainingConfig(model=model).model == model
    else:
        with pytest.raises(ConfigError, match=r"^model: unknown"):
            TrainingConfig(model=model)
