import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedvault.server.checks import TRAIN_METRICS, check_reply, check_update

REF = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def _arrays(**over):
    values = {k: v.copy() for k, v in REF.items()} | over
    return ArrayRecord(
        torch_state_dict={k: torch.from_numpy(v) for k, v in values.items()}
    )


def _reply(arrays=None, **metrics):
    m = {"num-examples": 10, "steps": 3} | metrics
    return RecordDict({"arrays": arrays or _arrays(), "metrics": MetricRecord(m)})


def test_a_well_formed_update_passes():
    assert check_update(_arrays(), REF) is None
    assert check_reply(_reply(), REF, TRAIN_METRICS) is None


def test_nan_inf_and_shape_are_refused():
    nan = np.zeros(3, dtype=np.float32)
    nan[1] = np.nan
    assert "NaN" in check_update(_arrays(b=nan), REF)
    inf = np.full(3, np.inf, dtype=np.float32)
    assert "infinite" in check_update(_arrays(b=inf), REF)
    assert "shape" in check_update(_arrays(w=np.zeros((3, 2), np.float32)), REF)
    extra = _arrays(z=np.zeros(1, np.float32))
    assert "names" in check_update(extra, REF)


def test_malformed_replies_are_refused_with_a_reason():
    assert "no ArrayRecord" in check_reply(
        RecordDict({"metrics": MetricRecord({"num-examples": 1})}), REF, TRAIN_METRICS
    )
    assert "differ" in check_reply(_reply(extra=1.0), REF, TRAIN_METRICS)
    assert "positive" in check_reply(_reply(**{"num-examples": 0}), REF, TRAIN_METRICS)
    assert "non-finite" in check_reply(_reply(steps=float("nan")), REF, TRAIN_METRICS)
    no_metrics = RecordDict({"arrays": _arrays(), "c": ConfigRecord({"a": 1})})
    assert "MetricRecord" in check_reply(no_metrics, REF, TRAIN_METRICS)
