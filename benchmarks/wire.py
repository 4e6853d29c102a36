"""B5: wire size — bytes a site sends per round / fp32 size of the model.

The train reply a site sends (exactly as fedvault's ClientApp builds it: the model's
ArrayRecord and its MetricRecord) is serialised with Flower's own protobuf serde;
its size is compared with 4 bytes per parameter. gRPC/HTTP/2 framing and TLS records
add a few dozen bytes per message on top (not counted).
"""

from __future__ import annotations

from typing import Any


def measure(hidden: int) -> dict[str, Any]:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from fedvault.common.models import build_model

    model = build_model("mlp", in_features=30, num_classes=2, hidden=hidden)
    params = sum(p.numel() for p in model.parameters())
    metrics = {
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
    reply = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    size = recorddict_to_proto(reply).ByteSize()
    return {
        "hidden": hidden,
        "parameters": params,
        "fp32_bytes": 4 * params,
        "reply_bytes": size,
        "ratio": size / (4 * params),
    }


def run(quick: bool) -> dict[str, Any]:
    points = [measure(h) for h in ((128,) if quick else (128, 512))]
    for p in points:
        print(
            f"B5 MLP hidden={p['hidden']}: {p['reply_bytes']} bytes sent per round "
            f"= {p['ratio']:.3f}x fp32 model size",
            flush=True,
        )
    return {"points": points, "int8": "not implemented"}
