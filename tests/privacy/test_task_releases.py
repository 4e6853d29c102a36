"""Regression targets and images go through the same summary mechanism as every
other release (the h2/h10 merge): no exact target statistic leaves a DP site, the
coordinator still gets a usable target scale, and an image summary holds only noisy
rows and labels with the declared shape."""

import math

import numpy as np
import pandas as pd
import pytest

from fedvault.client._summary_dp import Declared, noisy_summary
from fedvault.common.data import default_dataset
from fedvault.common.preprocessing import IMAGE_SHAPE, TARGET_STATS, merge_summaries
from fedvault.common.wire import summary_from_bytes, summary_to_bytes

pytestmark = pytest.mark.privacy

TARGET = "mean area"


def _regression_frame():
    return default_dataset().drop(columns=["target"])


def _summaries(declared, seeds=(1, 2)):
    frame = _regression_frame()
    halves = [frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2 :]]
    out = []
    for part, seed in zip(halves, seeds, strict=True):
        summary, _ = noisy_summary(
            part,
            TARGET,
            declared=declared,
            sigma=2.0,
            rng=np.random.default_rng(seed),
            regression=True,
        )
        out.append(summary_from_bytes(summary_to_bytes(summary)))
    return frame, out


def test_a_regression_target_is_released_noisy_without_a_second_moment():
    frame, summaries = _summaries(Declared())
    for s in summaries:
        target = s[TARGET_STATS]
        assert math.isnan(target["sumsq"]) and target["asinh"] is True
        assert (target["lo"], target["hi"]) == (-10.0, 10.0)
        assert s["labels"] == {} and TARGET not in s["numeric"]
    prep = merge_summaries(summaries, TARGET)
    assert prep.regression and prep.labels == ()
    y = frame[TARGET]
    # A usable scale from the noisy sums and the public spread: right order of size.
    assert abs(prep.target_mean - y.mean()) < 0.5 * y.mean()
    assert 0.3 * y.std() < prep.target_std < 3 * y.std()


def test_declared_target_bounds_give_the_public_share_of_their_range():
    y = _regression_frame()[TARGET]
    bounds = (float(y.min()), float(y.max()))
    _, summaries = _summaries(Declared(bounds={TARGET: bounds}))
    assert summaries[0][TARGET_STATS]["asinh"] is False
    prep = merge_summaries(summaries, TARGET)
    assert bounds[0] <= prep.target_mean <= bounds[1]
    assert prep.target_std == pytest.approx(0.14 * (bounds[1] - bounds[0]))


def test_an_image_summary_holds_noisy_rows_and_labels_only():
    frame = pd.DataFrame(
        {
            "pixels": [bytes([i % 256]) * 4 for i in range(200)],
            "y": [i % 2 for i in range(200)],
        }
    )
    summary, dropped = noisy_summary(
        frame,
        "y",
        declared=Declared(categories={"y": ("0", "1")}),
        sigma=2.0,
        rng=np.random.default_rng(0),
        image_shape=(1, 2, 2),
    )
    assert summary[IMAGE_SHAPE] == [1, 2, 2] and dropped == []
    assert summary["numeric"] == {} and summary["categorical"] == {}
    assert set(summary["labels"]) == {"0", "1"}
    assert summary["labels"] != {"0": 100, "1": 100} or summary["rows"] != 200
