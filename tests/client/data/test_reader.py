"""Reading raw exports: exact chunks, quoting, BOM, whitespace, Parquet input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fedvault.client.data.importer import ImportOptions, import_raw
from fedvault.client.data.reader import ReadOptions, iter_chunks, read_header
from fedvault.client.data.schema_toml import load_schema
from fedvault.client.data.vault import read_frame, read_manifest


def test_chunks_have_exact_sizes_and_positions(
    write_csv: Callable[..., Path], small_rows: list[str]
) -> None:
    raw = write_csv(small_rows)
    chunks = list(iter_chunks(raw, ReadOptions(chunk_rows=3)))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [c.index[0] for c in chunks] == [0, 3, 6, 9]
    assert chunks[3]["pid"].tolist() == ["P10"]


def test_quoted_newlines_bom_and_blank_lines(tmp_path: Path) -> None:
    raw = tmp_path / "odd.csv"
    raw.write_text(
        '\ufeffa, b \n1,"two\nlines"\n\n3,"x, y"\n   ,  \n', encoding="utf-8"
    )
    assert read_header(raw, ReadOptions()) == ["a", "b"]
    (frame,) = iter_chunks(raw, ReadOptions(), missing_values=("",))
    assert frame["b"].tolist()[:2] == ["two\nlines", "x, y"]
    assert len(frame) == 3  # the blank line is skipped, the whitespace row is not


def test_parquet_input(
    tmp_path: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
    key: bytes,
    secret: bytes,
) -> None:
    typed = pd.read_csv(write_csv(small_rows))  # ints, floats and text columns
    typed.loc[1, "name"] = None
    raw = tmp_path / "raw.parquet"
    typed.to_parquet(raw)
    vault = tmp_path / "pv"
    import_raw(
        raw,
        load_schema(small_schema),
        vault,
        key=key,
        secret=secret,
        options=ImportOptions(read=ReadOptions(chunk_rows=4)),
    )
    frame = read_frame(vault, key)
    assert len(frame) == 10
    assert frame["age"].tolist()[:2] == ["30-39", "30-39"]
    quality = read_manifest(vault, key).quality
    assert quality["completeness"]["columns"]["name"] == 0.9
    assert quality["consistency"]["duplicate-rows"] == 0
