"""The coordinator's side of ``--compress int8``: packed replies become weights
before any check; anything else is left for the checks to reject."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedvault.common.compression import PACKED_KEY, PACKED_TYPE, pack, quantize
from fedvault.server.checks import check_update, dequantize_replies


def _reference():
    rng = np.random.default_rng(0)
    return {
        "fc.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "fc.bias": rng.normal(size=4).astype(np.float32),
    }


def _reply(data: bytes, stype: str = PACKED_TYPE) -> Message:
    arrays = ArrayRecord(
        {PACKED_KEY: Array(dtype="bytes", shape=(len(data),), stype=stype, data=data)}
    )
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"n": 1})})
    return Message(content, dst_node_id=0, message_type="train")


@pytest.fixture(autouse=True)
def _as_the_server_app(local_grid):
    """Messages need the ServerApp runtime's identity (see conftest)."""


def test_packed_reply_becomes_the_sites_weights():
    ref = _reference()
    local = {k: v + 0.05 for k, v in ref.items()}
    reply = _reply(pack(quantize(local, ref, np.random.default_rng(1))))
    dequantize_replies([reply], ref)
    arrays = reply.content["arrays"]
    assert check_update(arrays, ref) is None
    for key, value in arrays.items():
        assert np.allclose(value.numpy(), local[key], atol=0.05 / 127 * 1.01)


def test_damaged_or_foreign_packed_reply_is_rejected_not_crashed():
    ref = _reference()
    data = pack(quantize(ref, ref, np.random.default_rng(1)))
    for reply in (_reply(data[:-3]), _reply(data, stype="other")):
        dequantize_replies([reply], ref)
        problem = check_update(reply.content["arrays"], ref)
        assert problem == "parameter names differ from the global model"
    # right names, but arrays Flower cannot read as numbers: a clear reason
    foreign = ArrayRecord(
        {k: Array(dtype="bytes", shape=(1,), stype="x", data=b"1") for k in ref}
    )
    problem = check_update(foreign, ref)
    assert problem is not None and "not a readable array" in problem
    # what numpy can read but is not a float tensor: an empty buffer, a string
    # array, an npz archive; each a reason, none a crash
    import io

    npz = io.BytesIO()
    np.savez(npz, x=np.zeros(3))
    strings = io.BytesIO()
    np.save(strings, np.array(["a", "b"]))
    for data in (b"", strings.getvalue(), npz.getvalue()):
        odd = ArrayRecord(
            {
                k: Array(
                    dtype="float32", shape=v.shape, stype="numpy.ndarray", data=data
                )
                for k, v in ref.items()
            }
        )
        problem = check_update(odd, ref)
        assert problem is not None and problem.startswith(("fc.bias", "fc.weight"))
