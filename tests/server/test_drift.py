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
