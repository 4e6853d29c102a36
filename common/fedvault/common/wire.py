"""Serde between fedvault's plain values and its own protobuf wire contracts.

The only module outside generated code that imports ``fedvault.proto``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from fedvault.common.errors import DataError
from fedvault.proto import summary_pb2

SUMMARY_VERSION = 2  # 2: noisy, clipped summaries with bounds


def summary_to_bytes(summary: dict[str, Any]) -> bytes:
    """Encode a :func:`fedvault.common.preprocessing.site_summary` result."""
    msg = summary_pb2.SiteSummary(version=SUMMARY_VERSION, rows=int(summary["rows"]))
    msg.labels.update({str(k): int(v) for k, v in summary["labels"].items()})
    for name, col in summary["numeric"].items():
        msg.numeric[name].CopyFrom(
            summary_pb2.NumericColumn(
                n=int(col["n"]),
                sum=float(col["sum"]),
                sumsq=float(col["sumsq"]),
                missing=int(col["missing"]),
                lo=float(col.get("lo", 0.0)),
                hi=float(col.get("hi", 0.0)),
                asinh=bool(col.get("asinh", False)),
            )
        )
    for name, col in summary["categorical"].items():
        entry = msg.categorical[name]
        entry.counts.update({str(k): int(v) for k, v in col["counts"].items()})
        entry.missing = int(col["missing"])
    target = summary.get("target-stats")
    if target is not None:
        msg.regression = True
        msg.target_n = int(target["n"])
        msg.target_sum = float(target["sum"])
        msg.target_sumsq = float(target["sumsq"])
        msg.target_lo = float(target.get("lo", 0.0))
        msg.target_hi = float(target.get("hi", 0.0))
        msg.target_asinh = bool(target.get("asinh", False))
    msg.image_shape.extend(int(v) for v in summary.get("image-shape", ()))
    msg.dropped.extend(str(c) for c in summary.get("dropped", ()))
    msg.noise = float(summary.get("noise", 0.0))
    return msg.SerializeToString(deterministic=True)


def summary_from_bytes(data: bytes) -> dict[str, Any]:
    """Decode a site summary; raises :class:`DataError` on garbage or a new version."""
    msg = summary_pb2.SiteSummary()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise DataError("site summary is not a valid SiteSummary message") from exc
    if msg.version != SUMMARY_VERSION:
        raise DataError(f"site summary version {msg.version} is not supported")
    summary: dict[str, Any] = {
        "rows": msg.rows,
        "labels": dict(msg.labels),
        "numeric": {
            name: {
                "n": c.n,
                "sum": c.sum,
                "sumsq": c.sumsq,
                "missing": c.missing,
                "lo": c.lo,
                "hi": c.hi,
                "asinh": c.asinh,
            }
            for name, c in msg.numeric.items()
        },
        "dropped": list(msg.dropped),
        "noise": msg.noise,
        "categorical": {
            name: {"counts": dict(c.counts), "missing": c.missing}
            for name, c in msg.categorical.items()
        },
    }
    if msg.regression:
        summary["target-stats"] = {
            "n": msg.target_n,
            "sum": msg.target_sum,
            "sumsq": msg.target_sumsq,
            "lo": msg.target_lo,
            "hi": msg.target_hi,
            "asinh": msg.target_asinh,
        }
    if msg.image_shape:
        summary["image-shape"] = list(msg.image_shape)
    return summary
