"""Vault throughput benchmark (a script, not a test).

Writes a synthetic raw export of ROWS x 30 columns (a record id that is pseudonymized,
age and sex as quasi-identifiers, 26 float features, a binary label), then measures,
each phase in its own process so that peak memory is its own:

- pandas:  ``pandas.read_csv`` of the file (the baseline);
- import:  ``fedvault data import`` of the same file (validate, anonymize, measure,
  encrypt); reported as a throughput ratio to pandas;
- read:    ``read_frame`` of the vault (verify, decrypt, parse Parquet);
- stream:  ``iter_batches`` over the vault, one chunk at a time;
- aes:     raw AES-256-GCM decryption of the same chunk bytes; ``read`` is reported
  as a throughput ratio to it.

Usage::

    python benchmarks/vault_bench.py --rows 1000000          # the figure in docs
    python benchmarks/vault_bench.py --rows 100000 --json     # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATURES = 26
SCHEMA = """
[dataset]
name = "bench"
k = 5
max-suppressed-share = 0.5

[columns.pid]
type = "id"
role = "identifier"
required = true
pseudonymize = true

[columns.age]
type = "int"
role = "quasi-identifier"
required = true
min = 0
max = 120
generalize = { method = "band", width = 10 }

[columns.sex]
type = "category"
role = "quasi-identifier"
categories = ["F", "M"]
"""
FEATURE_SPEC = '\n[columns.f{i:02d}]\ntype = "float"\nrole = "feature"\n'
LABEL_SPEC = '\n[columns.label]\ntype = "int"\nrole = "target"\n'
KEY = bytes(range(32))
SECRET = bytes(range(32, 64))


def generate(work: Path, rows: int, seed: int = 0) -> None:
    """The raw CSV (written in blocks, so memory stays small) and its schema."""
    schema = SCHEMA + "".join(FEATURE_SPEC.format(i=i) for i in range(FEATURES))
    (work / "schema.toml").write_text(schema + LABEL_SPEC, encoding="utf-8")
    rng = np.random.default_rng(seed)
    block = 100_000
    with (work / "raw.csv").open("w", encoding="utf-8") as handle:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            frame = pd.DataFrame(
                {
                    "pid": [f"P{start + i:09d}" for i in range(n)],
                    "age": rng.integers(18, 95, n),
                    "sex": rng.choice(["F", "M"], n),
                    **{
                        f"f{i:02d}": rng.normal(0, 1, n).round(6)
                        for i in range(FEATURES)
                    },
                    "label": rng.integers(0, 2, n),
                }
            )
            frame.to_csv(handle, index=False, header=start == 0)


def phase(name: str, work: Path, chunk_rows: int) -> dict[str, Any]:
    from fedvault.client.data import vault_format as fmt
    from fedvault.client.data.importer import ImportOptions, import_raw
    from fedvault.client.data.reader import ReadOptions
    from fedvault.client.data.schema_toml import load_schema
    from fedvault.client.data.vault import iter_batches, read_frame, read_manifest

    vault = work / "vault"
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if name == "pandas":
        out["rows"] = len(pd.read_csv(work / "raw.csv"))
    elif name == "import":
        result = import_raw(
            work / "raw.csv",
            load_schema(work / "schema.toml"),
            vault,
            key=KEY,
            secret=SECRET,
            options=ImportOptions(read=ReadOptions(chunk_rows=chunk_rows)),
        )
        out["rows"] = result.manifest.rows
    elif name == "read":
        out["rows"] = len(read_frame(vault, KEY))
    elif name == "stream":
        out["rows"] = sum(len(batch) for batch in iter_batches(vault, KEY))
    elif name == "aes":
        manifest = read_manifest(vault, KEY)
        blobs = [(vault / c.file).read_bytes() for c in manifest.chunks]
        start = time.perf_counter()  # decryption only, as for the vault read
        subkey = fmt.derive_subkey(KEY, bytes.fromhex(manifest.dataset_id))
        dataset = bytes.fromhex(manifest.dataset_id)
        out["bytes"] = sum(
            len(fmt.open_sealed(subkey, fmt.chunk_ad(dataset, i), blob))
            for i, blob in enumerate(blobs)
        )
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_phase(name: str, work: Path, chunk_rows: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--phase", name, "--work", str(work)]
    command += ["--chunk-rows", str(chunk_rows)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, help="folder to use (default: temp)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.work, args.chunk_rows)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="fedvault-bench-"))
    try:
        report = bench(work, args.rows, args.chunk_rows)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        print(f"{key:32s} {value}")


def bench(work: Path, rows: int, chunk_rows: int) -> dict[str, Any]:
    start = time.perf_counter()
    generate(work, rows)
    generated = time.perf_counter() - start
    csv_mb = (work / "raw.csv").stat().st_size / 2**20
    results = {
        name: run_phase(name, work, chunk_rows)
        for name in ("pandas", "import", "read", "stream", "aes")
    }
    vault_mb = sum(p.stat().st_size for p in (work / "vault").rglob("*")) / 2**20
    t = {name: r["seconds"] for name, r in results.items()}
    return {
        "rows x columns": f"{rows} x {FEATURES + 4}",
        "csv size (MiB)": round(csv_mb, 1),
        "vault size (MiB)": round(vault_mb, 1),
        "generate csv (s)": round(generated, 2),
        "pandas read_csv (s)": round(t["pandas"], 2),
        "import (s)": round(t["import"], 2),
        "import rows/s": round(rows / t["import"]),
        "import / pandas throughput": round(t["pandas"] / t["import"], 3),
        "vault read_frame (s)": round(t["read"], 2),
        "vault iter_batches (s)": round(t["stream"], 2),
        "raw AES-GCM decrypt (s)": round(t["aes"], 3),
        "read / raw AES-GCM throughput": round(t["aes"] / t["read"], 3),
        "peak RSS pandas (MiB)": round(results["pandas"]["peak_rss_mb"]),
        "peak RSS import (MiB)": round(results["import"]["peak_rss_mb"]),
        "peak RSS read_frame (MiB)": round(results["read"]["peak_rss_mb"]),
        "peak RSS iter_batches (MiB)": round(results["stream"]["peak_rss_mb"]),
        "chunk rows": chunk_rows,
    }


if __name__ == "__main__":
    main()
