"""The update digest both logs record: arrays of a plain reply, the masked vector
of a SecAgg+ masking-stage reply, nothing for a protocol stage."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedvault.common.update_digest import (
    arrays_digest,
    masked_vector_digest,
    update_digest,
)


def _masked(parts):
    record = ConfigRecord({Key.MASKED_PARAMETERS: parts})
    return RecordDict({"fitres.parameters": ArrayRecord(), RECORD_KEY_CONFIGS: record})


def test_a_masked_vector_is_digested_byte_for_byte():
    digest = update_digest(_masked([b"\x01\x02", b"\x03"]))
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert digest == masked_vector_digest(_masked([b"\x01\x02", b"\x03"]))
    # the split between the parts counts, and so does every byte
    assert digest != update_digest(_masked([b"\x01", b"\x02\x03"]))
    assert digest != update_digest(_masked([b"\x01\x02", b"\x04"]))


def test_arrays_take_precedence_and_a_protocol_stage_has_no_digest():
    plain = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3))})})
    assert update_digest(plain) == arrays_digest(plain) != ""
    stage = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.PUBLIC_KEY_1: b"k"})})
    assert update_digest(stage) == "" == update_digest(_masked([]))
