"""B9: using the trained model — export parity and throughput, compression, report.

On the default run (`fedvault simulate`: 5 sites, 10 rounds, MLP 30-128-1):

- ONNX parity: max |probability difference| between the exported ONNX model
  (onnxruntime) and PyTorch on 256 rows drawn from the run's statistics, as
  `fedvault model export` checks it;
- predict throughput (rows/s) of the whole exported pipeline (preprocessing in the
  graph) under onnxruntime against the same module in PyTorch eager, on one batch
  of synthetic rows, best of 5;
- int8 + 50 % pruning (`fedvault model compress`): saved size ratio of the weights
  (as written, sparse, and gzipped) and accuracy change on the embedded data.

And `fedvault report` on a 50-site, 30-round simulation (10 sites sampled a round,
a synthetic table of 2,500 rows): generation time (best of 3) and file size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import best_of

SITES, ROUNDS, SAMPLED = 50, 30, 10


def _simulate(out: Path, settings: dict[str, Any]) -> None:
    from fedvault.server import simulate as sim

    sim.run(sim.load_config(settings | {"timeout": 3600.0}), out)


def _throughput(trained: Any, rows: int) -> dict[str, float]:
    import onnxruntime
    import torch

    from fedvault.server import export

    sample = export.synthetic_rows(trained.prep, rows)
    inputs = export.encode_inputs(trained.prep, sample)
    with tempfile.TemporaryDirectory() as tmp:
        result = export.export(trained, export.ExportFormat.ONNX, Path(tmp) / "m.onnx")
        session = onnxruntime.InferenceSession(
            str(result.path), providers=["CPUExecutionProvider"]
        )
    feed = dict(zip(export.input_names(trained.prep), inputs, strict=True))
    pipeline = export.Pipeline(trained.model, trained.prep).eval()
    tensors = [torch.from_numpy(a) for a in inputs]

    def eager() -> None:
        with torch.no_grad():
            pipeline(*tensors)

    def ort() -> None:
        session.run(None, feed)

    seconds = {
        name: best_of(fn, 5) for name, fn in (("onnxruntime", ort), ("pytorch", eager))
    }
    return {
        "onnx_max_abs_diff": result.max_abs_diff,
        "rows": rows,
        "onnxruntime_rows_per_s": rows / seconds["onnxruntime"],
        "pytorch_rows_per_s": rows / seconds["pytorch"],
    }


def _compression(trained: Any) -> dict[str, Any]:
    from fedvault.common.data import default_dataset
    from fedvault.server import compress
    from fedvault.server import trained as trained_mod

    frame = default_dataset()
    x, _ = trained_mod.features(trained.prep, frame, source="embedded data")
    y = trained_mod.labels(trained.prep, frame, source="embedded data")
    _, rows = compress.compress(trained, quantize="int8", prune=0.5, labelled=(x, y))
    base, both = rows[0], rows[-1]
    return {
        "size_ratio": both.size / base.size,
        "gzipped_ratio": both.gzipped / base.gzipped,
        "accuracy_before": base.accuracy,
        "accuracy_after": both.accuracy,
        "accuracy_delta_points": 100 * (both.accuracy - base.accuracy),
    }


def _report(tmp: Path, quick: bool) -> dict[str, Any]:
    import pandas as pd
    from sklearn.datasets import make_classification

    from fedvault.server import html_report

    sites, rounds = (10, 5) if quick else (SITES, ROUNDS)
    x, y = make_classification(
        n_samples=sites * 50, n_features=30, n_informative=10, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(30)])
    frame["target"] = y
    data = tmp / "table.parquet"
    frame.to_parquet(data, index=False)
    out = tmp / "many"
    _simulate(
        out,
        {
            "sites": sites,
            "rounds": rounds,
            "data": str(data),
            "fraction-train": min(1.0, SAMPLED / sites),
        },
    )
    seconds = best_of(lambda: html_report.write(out), 3)
    return {
        "sites": sites,
        "rounds": rounds,
        "sampled_per_round": min(sites, SAMPLED),
        "seconds": seconds,
        "megabytes": (out / html_report.REPORT_FILE).stat().st_size / 1e6,
    }


def run(quick: bool) -> dict[str, Any]:
    from fedvault.server import trained

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        _simulate(tmp / "default", {"rounds": 3} if quick else {})
        model = trained.load(tmp / "default")
        results = {
            "export": _throughput(model, 10_000 if quick else 100_000),
            "compress": _compression(model),
            "report": _report(tmp, quick),
        }
    e, c, r = results["export"], results["compress"], results["report"]
    print(
        f"B9 ONNX max |diff| {e['onnx_max_abs_diff']:.2e}; predict "
        f"{e['onnxruntime_rows_per_s']:,.0f} rows/s (onnxruntime) vs "
        f"{e['pytorch_rows_per_s']:,.0f} (PyTorch eager); int8+prune50 "
        f"{c['size_ratio']:.2f}x size ({c['gzipped_ratio']:.2f}x gzipped), "
        f"{c['accuracy_delta_points']:+.2f} points; report at {r['sites']} sites x "
        f"{r['rounds']} rounds {r['seconds']:.2f} s, {r['megabytes']:.2f} MB",
        flush=True,
    )
    return results


def render(b: dict[str, Any]) -> list[str]:
    """B9's section of docs/benchmarks.md, with the issue's goals."""
    e, c, r = b["export"], b["compress"], b["report"]
    size = "met" if c["size_ratio"] <= 0.3 else f"missed ({c['size_ratio']:.2f}x)"
    acc = -c["accuracy_delta_points"]
    kept = "met" if acc <= 1 else f"missed ({acc:.2f} points)"
    fast = "met" if r["seconds"] <= 5 else f"missed ({r['seconds']:.2f} s)"
    small = "met" if r["megabytes"] <= 3 else f"missed ({r['megabytes']:.2f} MB)"
    return [
        "## B9 using the trained model (export, compress, report)",
        "",
        "On the default run: ONNX parity as `fedvault model export` checks it, "
        f"predict throughput of the exported pipeline on {e['rows']:,} synthetic "
        "rows (one batch, best of 5), and `fedvault model compress --quantize int8 "
        "--prune 0.5` with the embedded data as the labelled file. Then "
        f"`fedvault report` on a {r['sites']}-site, {r['rounds']}-round simulation "
        f"({r['sampled_per_round']} sites sampled a round).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| ONNX max abs probability difference | {e['onnx_max_abs_diff']:.2e} |",
        f"| predict, onnxruntime | {e['onnxruntime_rows_per_s']:,.0f} rows/s |",
        f"| predict, PyTorch eager | {e['pytorch_rows_per_s']:,.0f} rows/s |",
        f"| int8 + 50% pruned, saved size | {c['size_ratio']:.2f}x |",
        f"| int8 + 50% pruned, gzipped | {c['gzipped_ratio']:.2f}x |",
        f"| accuracy change | {c['accuracy_delta_points']:+.2f} points |",
        f"| report generation | {r['seconds']:.2f} s |",
        f"| report size | {r['megabytes']:.2f} MB |",
        "",
        f"**Goal <= 0.3x the size: {size}** (the pruned int8 weights saved sparse: "
        "a bit mask and the int8 codes of the weights kept, in one tensor; int8 "
        f"alone stays dense; gzipped {c['gzipped_ratio']:.2f}x). **At most "
        f"1 point of accuracy lost: {kept}.** **Report <= 5 s: {fast}; <= 3 MB: "
        f"{small}.**",
    ]
