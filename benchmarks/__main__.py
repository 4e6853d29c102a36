"""``python -m benchmarks [--quick] [--only B1,B3] [--largest N]``: run, print ratios,
write benchmarks/results.json and regenerate docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    bookkeeping,
    deployment,
    dp_cost,
    gpu,
    model_use,
    models_bench,
    overhead,
    report,
    scale,
    secagg_cost,
    wire,
)
from benchmarks._common import machine

RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, a few minutes"
    )
    parser.add_argument(
        "--only",
        default="B1,B2,B3,B4,B5,B6,B7,B8,B9,B11",
        help="comma-separated subset",
    )
    parser.add_argument(
        "--largest", type=int, default=1_000, help="B4's largest federation"
    )
    args = parser.parse_args()
    wanted = {name.strip().upper() for name in args.only.split(",")}
    previous: dict[str, Any] = (
        json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    )
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d"),
        "benchmarks": dict(previous.get("benchmarks", {})),
    }
    runners = {
        "B1": dp_cost.run,
        "B2": overhead.run,
        "B3": bookkeeping.run,
        "B5": wire.run,
        "B6": secagg_cost.run,
        "B8": deployment.run,
        "B9": model_use.run,
        "B11": models_bench.run,
    }
    for name, fn in runners.items():
        if name in wanted:
            results["benchmarks"][name] = fn(args.quick) | {
                "command": results["command"]
            }
    if "B10" in wanted:  # not in the default set: it needs a CUDA GPU
        b10 = gpu.run(args.quick)
        if "skipped" in b10 and "machine" in results["benchmarks"].get("B10", {}):
            print(f"B10 kept from an earlier GPU run: {b10['skipped']}")
        else:
            results["benchmarks"]["B10"] = b10 | {"command": results["command"]}
    if "B4" in wanted:
        results["benchmarks"]["B4"] = scale.run(args.quick, largest=args.largest) | {
            "command": results["command"]
        }
    if "B7" in wanted:
        rows = 100_000 if args.quick else 1_000_000
        results["benchmarks"]["B7"] = _vault(rows) | {"command": results["command"]}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report.write(results)
    print(f"wrote {RESULTS} and {report.DOC}")


def _vault(rows: int) -> dict[str, Any]:
    """B7: the vault benchmark script (its own processes), as JSON."""
    script = Path(__file__).with_name("vault_bench.py")
    done = subprocess.run(  # noqa: S603 - our own script, fixed argv
        [sys.executable, str(script), "--rows", str(rows), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    print(
        f"B7 vault ({rows} rows): import {result['import / pandas throughput']}x "
        f"pandas read_csv throughput, read {result['read / raw AES-GCM throughput']}x "
        "raw AES-GCM throughput",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
