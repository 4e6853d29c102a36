"""Reading tables for ``simulate --data``: one reader, one typing rule (issue 12).

Case 3 (an empty partition cell) and case 8 (a label of single rows) on the
simulate side; the reader's dialect detection and typing rule in general.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from fedvault.common.data import ColumnKind, ColumnTally, check_target, load_table
from fedvault.common.errors import DataError
from fedvault.common.partition import PartitionSpec, partition_table
from fedvault.common.tables import read_layout


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- case 3: an empty value in the partition column -----------------------------


def test_rows_without_a_site_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"{s},{i}.5,{i % 2}" for i, s in enumerate("aabbaab")]
    raw = _write(tmp_path / "sites.csv", "site,x,y\n" + "\n".join(rows) + "\n,9.5,1\n")
    frame = load_table(raw)
    with caplog.at_level(logging.WARNING):
        sites = partition_table(
            frame, PartitionSpec.parse("column:site"), num_sites=2, target="y", seed=0
        )
    assert [(name, len(part)) for name, part in sites] == [("site=a", 4), ("site=b", 3)]
    assert "partition column 'site' is empty in 1 row(s)" in caplog.text
    assert "left out" in caplog.text


def test_whole_number_sites_keep_their_name_beside_empty_cells() -> None:
    frame = pd.DataFrame({"site": [7.0, 12.0, None, 7.0], "y": [0, 1, 0, 1]})
    sites = partition_table(
        frame, PartitionSpec.parse("column:site"), num_sites=2, target="y", seed=0
    )
    assert [name for name, _ in sites] == ["site=12", "site=7"]


def test_a_partition_column_without_values_is_refused() -> None:
    frame = pd.DataFrame({"site": [None, " "], "y": [0, 1]}, dtype=object)
    with pytest.raises(DataError, match="partition column 'site' has no values"):
        partition_table(
            frame, PartitionSpec.parse("column:site"), num_sites=2, target="y", seed=0
        )


# --- case 8: a label of mostly single rows --------------------------------------


def test_check_target_refuses_a_label_of_single_rows() -> None:
    frame = pd.DataFrame({"x": range(30), "name": [f"Person {i}" for i in range(30)]})
    with pytest.raises(DataError, match=r"'name' is no label: 30 of its 30 classes"):
        check_target(frame, "name", source="t.csv")
    many = pd.DataFrame({"x": range(60), "y": [i // 2 for i in range(60)]})
    assert len(check_target(many, "y", source="t.csv")) == 60  # 30 classes of 2


# --- the reader and the typing rule ---------------------------------------------


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_the_separator_is_detected(tmp_path: Path, sep: str) -> None:
    raw = _write(
        tmp_path / "t.csv", sep.join(["a", "b", "y"]) + "\n1" + sep + "x" + sep + "0\n"
    )
    assert read_layout(raw).delimiter == sep
    assert list(load_table(raw).columns) == ["a", "b", "y"]


def test_a_given_separator_that_finds_one_column_gets_a_hint(tmp_path: Path) -> None:
    raw = _write(tmp_path / "t.csv", "a;b\n1;2\n")
    with pytest.raises(DataError, match="pass --delimiter ';'"):
        read_layout(raw, delimiter=",")


def test_types_match_what_pandas_read_for_ordinary_files(tmp_path: Path) -> None:
    raw = _write(
        tmp_path / "t.csv",
        "n,m,f,s,e\n1,1,0.5, north ,\n2,,1e3,south,\n",
    )
    frame = load_table(raw)
    assert [str(t) for t in frame.dtypes] == [
        "int64",
        "float64",
        "float64",
        "str",
        "float64",
    ]
    assert frame["s"].tolist() == ["north", "south"]
    assert frame["f"].tolist() == [0.5, 1000.0]


def test_an_unclosed_quote_at_the_end_is_malformed(tmp_path: Path) -> None:
    raw = _write(tmp_path / "t.csv", 'a,b\n1,2\n3,"4\n')
    with pytest.raises(DataError, match="quote opened in the last row is never closed"):
        load_table(raw)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([], ColumnKind.EMPTY),
        (["1", "2.5", "-3e2"], ColumnKind.NUMBER),
        (["007", "012", "A15"], ColumnKind.TEXT),
        (["007", "012", "120"], ColumnKind.CODE),
        (["a", "b", "1"], ColumnKind.TEXT),
        ([str(i) for i in range(30)] + ["<0.30"], ColumnKind.NUMBER),
        ([str(i % 5) for i in range(30)] + ["X"], ColumnKind.TEXT),
    ],
)
def test_the_column_rule(values: list[str], kind: ColumnKind) -> None:
    tally = ColumnTally()
    half = len(values) // 2
    for part in (values[:half], values[half:]):  # chunks add up
        tally.add(pd.Series(part, dtype="str", index=range(len(part))))
    assert tally.kind is kind
