"""The site's access log: every message and its reply, through the ClientApp's real
mod chain (``privacy_mod``), hash-chained and verifiable."""

import json
import os
import stat

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fedvault.client.access_log import ACCESS_LOG, access_log
from fedvault.client.access_log_cli import access_log_app
from fedvault.client.mods import privacy_mod
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import IntegrityError
from fedvault.common.protocol import (
    MISMATCH_PREFIX,
    RUN_KEY,
    STATS_MESSAGE,
    Decline,
)
from fedvault.common.update_digest import arrays_digest


@pytest.fixture(autouse=True)
def _coordinator_identity(monkeypatch):
    # what the ServerApp runtime sets: new instruction messages carry its run id
    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


GLOBAL = {"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(3, np.float32)}


def _context(state, **training):
    run_config = TrainingConfig(dp=False, **training).to_run_config()
    return Context(
        run_id=7,
        node_id=11,
        node_config={"site-name": "hospital-a", "data": "x.csv", "state": str(state)},
        state=RecordDict(),
        run_config=dict(run_config) | {RUN_KEY: "key-abc"},
    )


def _app(decline=None):
    app = ClientApp(mods=[privacy_mod])

    @app.train()
    def train(msg, context):
        if decline is not None:
            return decline.reply(msg)
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        local = ArrayRecord(
            {k: Array(a + 1) for k, a in zip(GLOBAL, arrays, strict=True)}
        )
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        return Message(RecordDict({"metrics": MetricRecord({"a": 1.0})}), reply_to=msg)

    @app.query("stats")
    def stats(msg, context):
        return Message(RecordDict({"site": ConfigRecord({"rows": 5})}), reply_to=msg)

    return app


def _message(kind, config=None):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(a) for k, a in GLOBAL.items()}),
            "config": ConfigRecord(config or {}),
        }
    )
    return Message(content, dst_node_id=11, message_type=kind)


def test_every_message_and_reply_is_logged_with_the_digest_of_what_left(tmp_path):
    app, ctxt = _app(), _context(tmp_path)
    trained = app(_message(MessageType.TRAIN, {"server-round": 3}), ctxt)
    app(_message(MessageType.EVALUATE, {"server-round": 3}), ctxt)
    app(_message(STATS_MESSAGE), ctxt)
    entries = list(access_log(tmp_path).entries())
    assert [(e["message"], e["reply"], e["round"]) for e in entries] == [
        ("train", "trained", 3),
        ("evaluate", "evaluated", 3),
        ("query.stats", "answered", None),
    ]
    assert entries[0]["arrays"] == arrays_digest(trained.content) != ""
    assert entries[1]["arrays"] == entries[2]["arrays"] == ""
    assert {e["run-id"] for e in entries} == {7}
    assert {e["run-key"] for e in entries} == {"key-abc"}
    mode = stat.S_IMODE(os.stat(tmp_path / ACCESS_LOG).st_mode)
    assert mode == 0o600
    assert access_log(tmp_path).verify().seq == 2


def test_a_decline_and_a_refusal_are_logged_with_why(tmp_path):
    ctxt = _context(tmp_path)
    decline = Decline("budget", "epsilon 3.1 would pass the site's 3.0")
    _app(decline)(_message(MessageType.TRAIN, {"server-round": 1}), ctxt)
    # the privacy gate refuses a clipping norm the run did not ask for
    refused = _app()(
        _message(MessageType.TRAIN, {"server-round": 2, "clipping_norm": 1.0}), ctxt
    )
    assert refused.has_error()
    first, second = access_log(tmp_path).entries()
    assert (first["reply"], first["detail"], first["arrays"]) == (
        "declined",
        "budget: epsilon 3.1 would pass the site's 3.0",
        "",
    )
    assert second["reply"] == "error"
    assert second["detail"].startswith(MISMATCH_PREFIX)


def test_a_reply_that_cannot_be_logged_does_not_leave(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / ACCESS_LOG).write_text("not json\n")  # a damaged last entry
    reply = _app()(_message(MessageType.TRAIN, {"server-round": 1}), _context(state))
    assert reply.has_error()
    assert "access log" in reply.error.reason
    assert not reply.has_content()


def test_a_site_without_a_state_folder_keeps_no_log(tmp_path):
    ctxt = _context(tmp_path)
    ctxt.node_config = {"partition-id": 0}
    reply = _app()(_message(MessageType.TRAIN, {"server-round": 1}), ctxt)
    assert not reply.has_error()
    assert not (tmp_path / ACCESS_LOG).exists()


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (lambda lines: lines.__setitem__(1, lines[1].replace('"trained"', '"x"')), 2),
        (lambda lines: lines.pop(0), 1),
        (lambda lines: lines.insert(0, lines.pop(2)), 1),
    ],
    ids=["edited", "deleted", "moved"],
)
def test_verify_names_the_first_bad_line(tmp_path, change, line):
    app, ctxt = _app(), _context(tmp_path)
    for r in (1, 2, 3):
        app(_message(MessageType.TRAIN, {"server-round": r}), ctxt)
    path = tmp_path / ACCESS_LOG
    lines = path.read_text().splitlines()
    assert json.loads(lines[1])["reply"] == "trained"
    change(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match=f"access log line {line} "):
        access_log(tmp_path).verify()


# --- the CLI ----------------------------------------------------------------------


def _site_toml(tmp_path):
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "hospital-a"\ncoordinator = "127.0.0.1:9092"\n'
        'state-dir = "state"\ndata = "rows.csv"\ninsecure = true\n'
    )
    return config, tmp_path / "state"


def test_cli_show_and_verify(tmp_path):
    config, state = _site_toml(tmp_path)
    app, ctxt = _app(), _context(state)
    for r in (1, 2):
        app(_message(MessageType.TRAIN, {"server-round": r}), ctxt)
    runner = CliRunner()
    shown = runner.invoke(
        access_log_app, ["show", "--config", str(config), "--format", "json"]
    )
    assert shown.exit_code == 0, shown.output
    assert [e["round"] for e in json.loads(shown.stdout)] == [1, 2]
    ok = runner.invoke(access_log_app, ["verify", "--config", str(config)])
    assert ok.exit_code == 0
    assert "2 entries, chain intact" in ok.stdout
    path = state / ACCESS_LOG
    path.write_text(path.read_text().replace('"round": 2', '"round": 5'))
    bad = runner.invoke(access_log_app, ["verify", "--config", str(config)])
    assert bad.exit_code == 2
    assert "access log line 2 (seq 1): edited" in " ".join(bad.output.split())
