"""A pruned int8 model stored sparse: what ``fedvault model compress --quantize
int8 --prune SHARE`` writes, so that pruning shrinks the file and not only its
gzipped size.

Each int8 Linear layer (``torch.ao.nn.quantized.dynamic.Linear``) is kept as a
bit mask of its non-zero weights (``numpy.packbits``, one bit per weight), the
int8 codes of those weights, its float32 bias, and its scale and zero point (the
layer's per-tensor quantization, unchanged). All layers' bytes go into one uint8
tensor (``blob``) described by a small JSON ``layout``; one tensor instead of
three per layer keeps ``torch.save``'s per-tensor overhead out of the file.

Decoding rebuilds exactly the int8 weights the layer had: a pruned weight is 0.0,
whose int8 code is the zero point.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from fedvault.common.errors import DataError

FORMAT = "sparse-int8"


def _layers(model: nn.Module) -> list[tuple[str, QuantizedLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]


def encode(model: nn.Module) -> dict[str, Any]:
    """The ``{"layout": JSON, "blob": uint8 tensor}`` of an int8 model."""
    layout, parts, offset = [], [], 0
    for name, layer in _layers(model):
        weight = layer.weight()  # type: ignore[no-untyped-call]
        bias = layer.bias()  # type: ignore[no-untyped-call]
        codes = weight.int_repr().numpy()
        zero = int(weight.q_zero_point())
        keep = codes != zero
        chunks = [
            np.packbits(keep.ravel()).tobytes(),
            codes[keep].astype(np.int8).tobytes(),
            b"" if bias is None else bias.detach().numpy().astype("<f4").tobytes(),
        ]
        layout.append(
            {
                "name": name,
                "shape": list(codes.shape),
                "scale": float(weight.q_scale()),
                "zero_point": zero,
                "kept": int(keep.sum()),
                "bias": bias is not None,
                "offset": offset,
            }
        )
        parts.extend(chunks)
        offset += sum(len(c) for c in chunks)
    blob = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    return {"layout": json.dumps(layout), "blob": torch.from_numpy(blob)}


def decode(model: nn.Module, encoded: dict[str, Any]) -> None:
    """Set the int8 layers of ``model`` (built and quantized as recorded) from
    :func:`encode`'s output.

    Raises:
        DataError: the encoding does not fit the model's layers.
    """
    try:
        layout = json.loads(str(encoded["layout"]))
        data = encoded["blob"].numpy().tobytes()
        layers = dict(_layers(model))
        for entry in layout:
            _set(layers[entry["name"]], entry, data)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise DataError(f"sparse weights do not fit the model ({exc})") from None


def _set(layer: QuantizedLinear, entry: dict[str, Any], data: bytes) -> None:
    rows, cols = entry["shape"]
    count, kept = rows * cols, int(entry["kept"])
    stream = io.BytesIO(data[int(entry["offset"]) :])
    mask_bytes = stream.read((count + 7) // 8)
    keep = np.unpackbits(np.frombuffer(mask_bytes, np.uint8), count=count).astype(bool)
    if int(keep.sum()) != kept:
        raise ValueError("mask and kept count disagree")
    codes = np.full(count, entry["zero_point"], dtype=np.int8)
    codes[keep] = np.frombuffer(stream.read(kept), dtype=np.int8)
    bias = None
    if entry["bias"]:
        bias = torch.from_numpy(
            np.frombuffer(stream.read(4 * rows), dtype="<f4").astype(np.float32)
        )
    weight = torch._make_per_tensor_quantized_tensor(  # the layer's own encoding
        torch.from_numpy(codes.reshape(rows, cols)),
        float(entry["scale"]),
        int(entry["zero_point"]),
    )
    layer.set_weight_bias(weight, bias)


def size(model: nn.Module) -> tuple[int, int]:
    """Bytes of the sparse encoding as ``torch.save`` writes it, and gzipped."""
    import gzip

    buffer = io.BytesIO()
    torch.save(encode(model), buffer)
    data = buffer.getvalue()
    return len(data), len(gzip.compress(data, mtime=0))
