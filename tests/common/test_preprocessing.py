import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedvault.common.errors import DataError
from fedvault.common.preprocessing import Preprocessing, merge_summaries, site_summary


def _frame(seed, n):
    rng = np.random.default_rng(seed)
    age = rng.normal(50, 10, size=n)
    age[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "age": age,
            "dose": rng.integers(0, 5, size=n).astype(float),
            "ward": rng.choice(["icu", "er", "gen", None], size=n),
            "target": rng.choice(["yes", "no"], size=n),
        }
    )


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=3, max_value=60), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
)
def test_merged_stats_equal_pooled_stats(sizes, seed):
    parts = [_frame(seed + i, n) for i, n in enumerate(sizes)]
    pooled = pd.concat(parts, ignore_index=True)
    prep = merge_summaries([site_summary(p, "target") for p in parts], "target")
    for col, mean, std in zip(prep.numeric, prep.means, prep.stds, strict=True):
        values = pooled[col].dropna()
        if values.empty:
            continue
        assert mean == pytest.approx(values.mean(), rel=1e-9, abs=1e-9)
        expected = values.std(ddof=0)
        assert std == pytest.approx(expected if expected > 1e-12 else 1.0, rel=1e-6)
    vocab = dict(zip(prep.categorical, prep.vocab, strict=True))
    assert vocab["ward"] == tuple(sorted(pooled["ward"].dropna().unique()))
    assert set(prep.labels) == set(pooled["target"])
    assert prep.rows == len(pooled)


def test_transform_imputes_encodes_and_standardizes():
    site_a = pd.DataFrame({"x": [1.0, 3.0], "c": ["u", "v"], "target": [0, 1]})
    site_b = pd.DataFrame({"x": [5.0, np.nan], "c": ["u", None], "target": [1, 0]})
    prep = merge_summaries(
        [site_summary(site_a, "target"), site_summary(site_b, "target")], "target"
    )
    assert prep.feature_names == ("x", "c=u", "c=v")
    assert prep.means == (3.0,)
    assert prep.modes == ("u",)
    out = prep.transform(
        pd.DataFrame({"x": [np.nan, 3.0 + prep.stds[0]], "c": [None, "w"]})
    )
    # missing x -> mean -> 0 after standardizing; missing c -> mode "u"; unseen -> zeros
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(prep.encode_labels(pd.Series([1, 0])), [1, 0])


def test_json_round_trip_and_unknown_labels():
    prep = merge_summaries([site_summary(_frame(0, 30), "target")], "target")
    again = Preprocessing.from_json(prep.to_json())
    assert again == prep
    with pytest.raises(DataError, match="maybe"):
        prep.encode_labels(pd.Series(["yes", "maybe"]))


def test_sites_that_disagree_on_columns_are_refused():
    a = site_summary(pd.DataFrame({"x": [1.0], "target": [0]}), "target")
    b = site_summary(pd.DataFrame({"x": ["1"], "target": [1]}), "target")
    with pytest.raises(DataError, match="x"):
        merge_summaries([a, b], "target")


def test_summary_holds_counts_not_rows():
    frame = _frame(1, 40)
    summary = site_summary(frame, "target")
    assert set(summary) == {"rows", "labels", "numeric", "categorical"}
    assert set(summary["numeric"]["age"]) == {"n", "sum", "sumsq", "missing"}
    assert summary["numeric"]["age"]["n"] + summary["numeric"]["age"]["missing"] == 40


def test_a_very_noisy_site_does_not_swamp_the_merged_mean():
    """DP summaries (sums of values scaled to [0, 1], no second moment): a site
    that released at a tiny budget says so (its noise std), and the merge weights
    its sums by the inverse noise variance: its garbage sum barely moves the mean;
    without noise stds the sites count alike."""

    def dp(total, n, noise):
        column = {"n": n, "sum": total, "sumsq": float("nan"), "missing": 0}
        column |= {"lo": 0.0, "hi": 10.0, "asinh": False}
        return {
            "rows": n,
            "labels": {"0": n},
            "numeric": {"x": column},
            "categorical": {},
            "noise": noise,
        }

    good = [dp(50.0, 100, 5.0), dp(52.0, 100, 5.0)]  # means 5.0 and 5.2
    garbage = dp(-400.0, 100, 100.0)
    prep = merge_summaries([*good, garbage], "y")
    assert prep.means[0] == pytest.approx(5.1, abs=0.1)
    assert prep.stds[0] == pytest.approx(1.4)  # the public scale, STD_SHARE x 10
    unweighted = [{k: v for k, v in s.items() if k != "noise"} for s in good]
    unweighted.append({k: v for k, v in garbage.items() if k != "noise"})
    assert merge_summaries(unweighted, "y").means[0] == 0.0  # clipped to lo
