import pandas as pd
import pytest

from fedvault.common.errors import DataError
from fedvault.common.preprocessing import site_summary
from fedvault.common.wire import summary_from_bytes, summary_to_bytes
from fedvault.proto import summary_pb2


def test_summary_round_trips_through_protobuf():
    frame = pd.DataFrame({"x": [1.0, None, 3.5], "c": ["a", "b", None], "y": [0, 1, 1]})
    summary = site_summary(frame, "y")
    summary["numeric"]["x"] |= {"lo": 0.0, "hi": 10.0, "asinh": False}
    summary["dropped"] = ["name"]
    summary["noise"] = 5.5  # the release's noise std, which the merge weights by
    assert summary_from_bytes(summary_to_bytes(summary)) == summary


def test_garbage_and_unknown_versions_are_refused():
    with pytest.raises(DataError, match="valid"):
        summary_from_bytes(b"\xff\xff\xff")
    future = summary_pb2.SiteSummary(version=99).SerializeToString()
    with pytest.raises(DataError, match="version 99"):
        summary_from_bytes(future)
