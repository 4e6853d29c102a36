"""The drift check and the skew measures on site summaries as the sites send them
(``fedvault.common.preprocessing.site_summary``)."""

import math

import pandas as pd
import pytest

from fedvault.common.preprocessing import merge_summaries, site_summary
from fedvault.server import drift, report_data


def _frame(shift=0.0, share_b=0.5, rows=400):
    n_b = int(rows * share_b)
    return pd.DataFrame(
        {
            "age": [50.0 + shift + (i % 20) for i in range(rows)],
            "ward": ["a"] * (rows - n_b) + ["b"] * n_b,
            "target": [i % 2 for i in range(rows)],
        }
    )


def test_pooled_equals_the_merged_preprocessing():
    summaries = [site_summary(_frame(), "target"), site_summary(_frame(5), "target")]
    pooled = drift.pooled(summaries)
    prep = merge_summaries(summaries, "target")
    assert pooled["numeric"]["age"]["mean"] == pytest.approx(prep.means[0])
    assert pooled["numeric"]["age"]["std"] == pytest.approx(prep.stds[0])
    assert pooled["categorical"]["ward"]["counts"] == {"a": 400, "b": 400}
    assert pooled["rows"] == 800 and pooled["labels"] == {"0": 400, "1": 400}


def test_a_mean_shift_and_a_category_shift_are_flagged():
    old = drift.pooled([site_summary(_frame(), "target")])
    new = drift.pooled([site_summary(_frame(shift=3.0, share_b=0.9), "target")])
    prep = merge_summaries([site_summary(_frame(), "target")], "target")
    shifts = {s.column: s for s in drift.compare(old, prep, new)}
    assert shifts["age"].flagged and shifts["age"].value == pytest.approx(
        3 / 5.766, 1e-3
    )
    assert shifts["ward"].flagged and shifts["ward"].measure == "PSI"
    # 0.5/0.5 -> 0.1/0.9: (0.4 ln 5) + (0.4 ln 1.8)
    assert shifts["ward"].value == pytest.approx(
        0.4 * math.log(5) + 0.4 * math.log(1.8)
    )
    assert not shifts["label"].flagged
    same = drift.compare(old, prep, old)
    assert not any(s.flagged for s in same)


def test_a_parent_without_pooled_summaries_is_compared_by_its_preprocessing():
    prep = merge_summaries([site_summary(_frame(), "target")], "target")
    frame = _frame()
    frame.loc[:9, "ward"] = "c"
    new = drift.pooled([site_summary(frame, "target")])
    shifts = {s.column: s for s in drift.compare(None, prep, new)}
    assert shifts["ward"].measure == "categories" and shifts["ward"].flagged
    assert "new: c" in shifts["ward"].detail
    assert not shifts["age"].flagged and "label" not in shifts


def test_skew_per_site_against_the_pool():
    a, b = site_summary(_frame(), "target"), site_summary(_frame(4.0, 0.2), "target")
    received = {
        "sites": {"a": drift.describe(a), "b": drift.describe(b)},
        "pooled": drift.pooled([a, b]),
    }
    shifts = report_data.mean_shifts(received)
    assert shifts["a"]["age"] == pytest.approx(-shifts["b"]["age"])
    assert shifts["b"]["age"] > 0.3
    psis = report_data.category_psi(received)
    assert psis["b"]["ward"] > psis["a"]["label"] == pytest.approx(0.0)
    share, worst, _ = report_data.completeness(received["sites"]["a"])
    assert share == 1.0 and worst in ("age", "ward")


def _dp(mean_u, *, n=200, noise=0.0, lo=0.0, hi=100.0, asinh=False):
    """A DP summary's shape: the sum of values scaled to [0, 1], no second moment."""
    column = {"n": n, "sum": mean_u * n, "sumsq": math.nan, "missing": 0}
    column |= {"lo": lo, "hi": hi, "asinh": asinh}
    return {
        "rows": n,
        "labels": {"0": n},
        "numeric": {"age": column},
        "categorical": {},
        "noise": noise,
    }


def test_dp_summaries_are_compared_in_the_coordinators_units_and_scale():
    """Means mapped back to the bounds, shifts in the public scale the model is
    standardized with (STD_SHARE x range = 14), a shift within the two means' DP
    noise not flagged, and a column bounded differently flagged as such."""
    old = drift.pooled([_dp(0.40)])
    assert old["numeric"]["age"]["mean"] == pytest.approx(40.0)
    assert old["numeric"]["age"]["std"] is None  # not released
    prep = merge_summaries([_dp(0.40)], "target")
    for parent in (old, None):  # its pooled description, or its preprocessing
        (age,) = drift.compare(parent, prep, drift.pooled([_dp(0.47)]))[:1]
        assert age.flagged and age.value == pytest.approx(7 / 14)
    # the same shift, with a noise std of 20 on each sum of 200 rows: the means'
    # noise is 100 * 20 / 200 = 10 each, 14 for the difference: within 3 of it
    noisy = [drift.pooled([_dp(m, noise=20.0)]) for m in (0.40, 0.47)]
    (age,) = drift.compare(noisy[0], prep, noisy[1])[:1]
    assert not age.flagged and "within it" in age.detail
    # the values clipped at the upper bound: the shift is a lower bound, said so
    (age,) = drift.compare(old, prep, drift.pooled([_dp(0.99)]))[:1]
    assert age.flagged and "clipped" in age.detail
    (age,) = drift.compare(
        old, prep, drift.pooled([_dp(0.7, lo=-10, hi=10, asinh=True)])
    )[:1]
    assert age.flagged and age.measure == "bounds"
