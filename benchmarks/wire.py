"""B5: wire size — bytes a site sends per round / fp32 size of the model.

The train reply a site sends (exactly as fedvault's ClientApp builds it: the model's
ArrayRecord, or with ``--compress int8`` its packed update, one byte string of
per-tensor scales and int8 codes, and its MetricRecord) is serialised with Flower's
own protobuf serde; its size is compared with 4 bytes per parameter. gRPC/HTTP/2
framing and TLS records add a few dozen bytes per message on top (not counted).
The accuracy change of int8 is measured on the default federation with the same
seed, with and without it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

METRICS = {
    "num-examples": 77,
    "loss": 0.3,
    "steps": 3,
    "epsilon": 2.99,
    "epsilon-lifetime": 2.99,
    "epsilon-budget": 3.0,
    "delta": 1e-5,
    "noise-multiplier": 3.0,
    "sample-rate": 1 / 3,
}


def measure(hidden: int) -> dict[str, Any]:
    import numpy as np
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from fedvault.common.compression import pack, quantize
    from fedvault.common.models import build_model
    from fedvault.common.records import packed_record

    model = build_model("mlp", in_features=30, num_classes=2, hidden=hidden)
    params = sum(p.numel() for p in model.parameters())
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    codes = quantize(
        weights, {k: v * 0.99 for k, v in weights.items()}, np.random.default_rng(0)
    )
    records = {
        "plain": ArrayRecord(model.state_dict()),
        "int8": packed_record(pack(codes)),
    }
    sizes = {
        name: recorddict_to_proto(
            RecordDict({"arrays": arrays, "metrics": MetricRecord(METRICS)})
        ).ByteSize()
        for name, arrays in records.items()
    }
    fp32 = 4 * params
    return {
        "hidden": hidden,
        "parameters": params,
        "fp32_bytes": fp32,
        "reply_bytes": sizes["plain"],
        "ratio": sizes["plain"] / fp32,
        "int8_reply_bytes": sizes["int8"],
        "int8_ratio": sizes["int8"] / fp32,
    }


def accuracy_change(rounds: int) -> dict[str, float]:
    """Same seed, same default federation, with and without int8 updates."""
    from fedvault.server import simulate as sim

    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for compress in ("none", "int8"):
            cfg = sim.load_config({"rounds": rounds, "compress": compress})
            acc[compress] = sim.run(cfg, Path(tmp) / compress)["final"]["accuracy"]
    return {
        "rounds": rounds,
        "accuracy_plain": acc["none"],
        "accuracy_int8": acc["int8"],
        "change_points": 100 * (acc["int8"] - acc["none"]),
    }


def run(quick: bool) -> dict[str, Any]:
    points = [measure(h) for h in ((128,) if quick else (128, 512))]
    for p in points:
        print(
            f"B5 MLP hidden={p['hidden']}: {p['reply_bytes']} bytes sent per round "
            f"= {p['ratio']:.3f}x fp32 model size; int8 {p['int8_ratio']:.3f}x",
            flush=True,
        )
    change = accuracy_change(3 if quick else 10)
    print(
        f"B5 int8 accuracy change: {change['change_points']:+.2f} points "
        f"({change['accuracy_plain']:.4f} -> {change['accuracy_int8']:.4f})",
        flush=True,
    )
    return {"points": points, "int8_accuracy": change}
