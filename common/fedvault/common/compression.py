"""Update compression on the wire: int8 with stochastic rounding (``--compress int8``).

A site sends ``round(delta / s + U)`` as int8, with one float32 scale ``s = max|delta| /
127`` per tensor, where ``delta`` is its model minus the global model it received and
``U`` is uniform in [0, 1): the rounding is unbiased, so the coordinator's average of
dequantized updates is the average of the updates in expectation. DP noise has been
added during training, before quantization, so quantizing is post-processing and
costs no privacy. The coordinator dequantizes (global + q * s) before any check or
aggregation, so everything downstream sees ordinary float32 weights.

On the wire the whole update is one byte string (:func:`pack`): the float32 scales
(little-endian, one per tensor, tensors in sorted key order) followed by every
tensor's int8 codes in the same order. Shapes are not sent: both sides know them
from the global model the site received. One buffer instead of two arrays per
tensor saves Flower's per-array header (dtype, shape, type, a numpy file header):
about 180 bytes a tensor, a tenth of a small model's int8 update.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SCALE_SUFFIX = "::scale"
LEVELS = 127
PACKED_KEY = "int8"  # the one array of a packed update
PACKED_TYPE = "fv.int8.v1"  # its Flower ``stype``: fedvault's layout, version 1


def quantize(
    local: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """int8 codes and float32 scales of ``local - reference``, per tensor."""
    out: dict[str, np.ndarray] = {}
    for key, value in local.items():
        delta = np.asarray(value, dtype=np.float64) - reference[key]
        peak = float(np.max(np.abs(delta))) if delta.size else 0.0
        scale = peak / LEVELS if peak > 0 else 1.0
        scaled = delta / scale
        codes = np.floor(scaled + rng.random(delta.shape))
        out[key] = np.clip(codes, -LEVELS, LEVELS).astype(np.int8)
        out[key + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
    return out


def dequantize(
    sent: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """float32 weights ``reference + codes * scale``; None if ``sent`` is not a
    well-formed int8 update of ``reference`` (the caller then rejects it)."""
    if set(sent) != set(reference) | {k + SCALE_SUFFIX for k in reference}:
        return None
    out = {}
    for key, ref in reference.items():
        codes, scale = sent[key], sent[key + SCALE_SUFFIX]
        if codes.dtype != np.int8 or codes.shape != ref.shape or scale.shape != (1,):
            return None
        out[key] = (ref + codes.astype(np.float32) * np.float32(scale[0])).astype(
            ref.dtype
        )
    return out


def pack(sent: Mapping[str, np.ndarray]) -> bytes:
    """One byte string for the output of :func:`quantize`."""
    keys = sorted(k for k in sent if not k.endswith(SCALE_SUFFIX))
    scales = np.array([sent[k + SCALE_SUFFIX][0] for k in keys], dtype="<f4")
    codes = (np.ascontiguousarray(sent[k], dtype=np.int8).tobytes() for k in keys)
    return scales.tobytes() + b"".join(codes)


def unpack(
    data: bytes, reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """The :func:`quantize` mapping back from :func:`pack`'s bytes; None if ``data``
    is not a packed update of ``reference`` (wrong length, or a scale that is not a
    positive finite number)."""
    keys = sorted(reference)
    head = 4 * len(keys)
    sizes = [int(np.asarray(reference[k]).size) for k in keys]
    if len(data) != head + sum(sizes):
        return None
    scales = np.frombuffer(data, dtype="<f4", count=len(keys))
    if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        return None
    out: dict[str, np.ndarray] = {}
    offset = head
    for key, size, scale in zip(keys, sizes, scales, strict=True):
        codes = np.frombuffer(data, dtype=np.int8, count=size, offset=offset)
        out[key] = codes.reshape(np.asarray(reference[key]).shape)
        out[key + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
        offset += size
    return out
