import numpy as np
import pandas as pd
import pytest

from fedvault.common.errors import ConfigError, DataError
from fedvault.common.partition import PartitionSpec, partition_table


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row": np.arange(n),
            "x": rng.normal(size=n),
            "hospital": rng.choice(["a", "b", "c"], size=n),
            "target": rng.integers(0, 2, size=n),
        }
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("column:hospital", PartitionSpec("column", column="hospital")),
    ],
)
def test_parse(text, expected):
    spec = PartitionSpec.parse(text)
    assert spec == expected
    assert str(spec) == text


@pytest.mark.parametrize(
    "text",
    ["", "iid:3", "dirichlet", "dirichlet:-1", "dirichlet:nan", "column:", "shards:2"],
)
def test_parse_rejects(text):
    with pytest.raises(ConfigError, match="partition"):
        PartitionSpec.parse(text)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3"])
def test_every_row_goes_to_exactly_one_site(spec):
    frame = _frame()
    sites = partition_table(
        frame, PartitionSpec.parse(spec), num_sites=4, target="target", seed=1
    )
    assert [name for name, _ in sites] == ["site-1", "site-2", "site-3", "site-4"]
    rows = np.concatenate([part["row"].to_numpy() for _, part in sites])
    assert sorted(rows.tolist()) == list(range(len(frame)))


def test_iid_sizes_are_balanced_and_seeded():
    frame = _frame()
    a = partition_table(
        frame, PartitionSpec("iid"), num_sites=4, target="target", seed=3
    )
    b = partition_table(
        frame, PartitionSpec("iid"), num_sites=4, target="target", seed=3
    )
    assert [len(p) for _, p in a] == [50, 50, 50, 50]
    assert all(pa.equals(pb) for (_, pa), (_, pb) in zip(a, b, strict=True))


def test_dirichlet_skews_labels():
    frame = _frame(n=1000)
    sites = partition_table(
        frame,
        PartitionSpec("dirichlet", alpha=0.1),
        num_sites=5,
        target="target",
        seed=0,
    )
    shares = [p["target"].mean() for _, p in sites if len(p) > 20]
    assert max(shares) - min(shares) > 0.3


def test_column_partition_is_natural_and_drops_the_column():
    frame = _frame()
    sites = partition_table(
        frame,
        PartitionSpec("column", column="hospital"),
        num_sites=99,
        target="target",
        seed=0,
    )
    assert [name for name, _ in sites] == ["hospital=a", "hospital=b", "hospital=c"]
    for name, part in sites:
        assert "hospital" not in part.columns
        value = name.split("=")[1]
        assert sorted(part["row"]) == sorted(frame.loc[frame.hospital == value, "row"])


def test_errors_name_the_problem():
    frame = _frame(n=10)
    with pytest.raises(ConfigError, match="sites"):
        partition_table(
            frame, PartitionSpec("iid"), num_sites=11, target="target", seed=0
        )
    with pytest.raises(DataError, match="nope"):
        partition_table(
            frame,
            PartitionSpec("column", column="nope"),
            num_sites=2,
            target="target",
            seed=0,
        )
