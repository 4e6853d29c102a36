"""Malformed training replies from one of five sites (a modified ClientApp over the
in-process grid): each is refused with a reason filed under the site's name, the
round aggregates the four honest updates, and the run completes."""

import json
import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [11, 22, 33, 44, 55]
HOSTILE = 55


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}


def _with(reply, msg, *, arrays=None, metrics=None, drop=()):
    weights = _arrays(reply) if arrays is None else arrays(_arrays(reply))
    values = dict(reply.content.metric_records["metrics"])
    values = {k: v for k, v in (values | (metrics or {})).items() if k not in drop}
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                array_dict={k: Array(np.asarray(v)) for k, v in weights.items()}
            ),
            "metrics": MetricRecord(values),
        }
    )
    return Message(content, reply_to=msg)


def _first(weights, change):
    key = next(iter(weights))
    return weights | {key: change(weights[key])}


def _nan(w):
    w = w.copy()
    w.flat[0] = np.nan
    return w


def _inf(w):
    w = w.copy()
    w.flat[0] = np.inf
    return w


CASES = {
    "wrong-shape": (
        lambda r, m: _with(r, m, arrays=lambda w: _first(w, lambda a: a[:-1])),
        "shape",
    ),
    "nan": (
        lambda r, m: _with(r, m, arrays=lambda w: _first(w, _nan)),
        "NaN or infinite",
    ),
    "inf": (
        lambda r, m: _with(r, m, arrays=lambda w: _first(w, _inf)),
        "NaN or infinite",
    ),
    "missing-array": (
        lambda r, m: _with(r, m, arrays=lambda w: dict(list(w.items())[1:])),
        "parameter names differ",
    ),
    "extra-array": (
        lambda r, m: _with(r, m, arrays=lambda w: w | {"extra": np.zeros(3, "f4")}),
        "parameter names differ",
    ),
    "integer-dtype": (
        lambda r, m: _with(r, m, arrays=lambda w: _first(w, lambda a: a.astype("i4"))),
        "not an array of floating-point numbers",
    ),
    "missing-steps": (
        lambda r, m: _with(r, m, drop=("steps",)),
        "differ from the expected",
    ),
    "extra-metric": (
        lambda r, m: _with(r, m, metrics={"bogus": 1.0}),
        "differ from the expected",
    ),
    "nan-steps": (
        lambda r, m: _with(r, m, metrics={"steps": math.nan}),
        "non-finite metric",
    ),
    "zero-examples": (
        lambda r, m: _with(r, m, metrics={"num-examples": 0}),
        "num-examples must be positive",
    ),
    "negative-examples": (
        lambda r, m: _with(r, m, metrics={"num-examples": -5}),
        "num-examples must be positive",
    ),
    "no-metrics": (
        lambda r, m: Message(
            RecordDict({"arrays": r.content.array_records["arrays"]}), reply_to=m
        ),
        "no MetricRecord",
    ),
    "no-arrays": (
        lambda r, m: Message(
            RecordDict({"metrics": r.content.metric_records["metrics"]}), reply_to=m
        ),
        "no ArrayRecord",
    ),
}


def _hostile(tamper):
    def app(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if context.node_id != HOSTILE or msg.metadata.message_type != "train":
            return reply
        return tamper(reply, msg)

    return app


def _run(tmp_path, local_grid, make_contexts, app):
    run_config = site_run_config(tmp_path, NODES, rounds=2)
    grid = local_grid(app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    return json.loads((tmp_path / "out" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_update_is_refused_by_name(
    tmp_path, local_grid, make_contexts, case
):
    tamper, reason = CASES[case]
    summary = _run(tmp_path, local_grid, make_contexts, _hostile(tamper))
    assert summary["status"] == "completed"
    assert [row["sites_trained"] for row in summary["history"]] == [4, 4]
    rejected = summary["sites"]["site-5"]["rejected_updates"]
    assert [r["round"] for r in rejected] == [1, 2]
    assert all(reason in r["reason"] for r in rejected), rejected
    assert summary["final"]["accuracy"] > 0.8


@pytest.mark.slow
def test_a_crashing_site_is_a_failure_under_its_name(
    tmp_path, local_grid, make_contexts
):
    def crash(reply: Message, msg: Message) -> Message:
        error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "ValueError: boom")
        return Message(error, reply_to=msg)

    summary = _run(tmp_path, local_grid, make_contexts, _hostile(crash))
    assert summary["status"] == "completed"
    failures = summary["sites"]["site-5"]["failures"]
    assert [f["round"] for f in failures] == [1, 2]
    assert all("boom" in f["reason"] for f in failures)
