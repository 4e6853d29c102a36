"""The ledger head a site publishes with its replies: the anchor of its ledger at
that moment, through the ClientApp's real mod chain; none without a ledger, none
from a ledger that fails verification, never on a SecAgg+ stage or an error."""

import hashlib

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.task_identity import TaskIdentity

from fedvault.client.access_log import access_log
from fedvault.client.ledger import PrivacyLedger, anchor
from fedvault.client.mods import privacy_mod
from fedvault.client.published_head import publish_head
from fedvault.common.privacy import Step
from fedvault.common.protocol import (
    LEDGER_HEAD,
    STATS_MESSAGE,
    Decline,
    LedgerHead,
)

DATASET = "icu-2024"


@pytest.fixture(autouse=True)
def _coordinator_identity(monkeypatch):
    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _site(state, rounds):
    (state / "site.toml").parent.mkdir(parents=True, exist_ok=True)
    (state / "site.toml").write_text(
        f'[privacy]\ndataset-id = "{DATASET}"\nepsilon-max = 10.0\ndelta = 1e-5\n'
    )
    if rounds:
        ledger = PrivacyLedger.open(state, DATASET, delta=1e-5, accountant="rdp")
        step = Step(noise_multiplier=1.2, sample_rate=0.1, steps=10)
        for r in range(1, rounds + 1):
            digest = hashlib.sha256(f"u{r}".encode()).hexdigest()
            ledger.append("run-a", r, step, 1.0, digest)
    return Context(
        run_id=7,
        node_id=11,
        node_config={"site-name": "a", "data": "x.csv", "state": str(state)},
        state=RecordDict(),
        run_config={},
    )


def _stats(context):
    app = ClientApp(mods=[privacy_mod])

    @app.query("stats")
    def stats(msg, ctx):
        return Message(RecordDict({"site": ConfigRecord({"rows": 5})}), reply_to=msg)

    msg = Message(RecordDict(), dst_node_id=11, message_type=STATS_MESSAGE)
    return app(msg, context)


def test_each_reply_carries_the_ledger_anchor_and_the_access_log_says_so(tmp_path):
    context = _site(tmp_path, rounds=3)
    reply = _stats(context)
    head = LedgerHead.from_content(reply.content)
    now = anchor(tmp_path, DATASET)
    assert head is not None
    assert (head.dataset_id, head.count, head.hash) == (DATASET, 3, now["hash"])
    assert head.epsilon == now["epsilon"]
    (entry,) = access_log(tmp_path).entries()
    assert entry["ledger-head"] == {"count": 3, "hash": now["hash"]}


def test_no_ledger_no_head(tmp_path):
    reply = _stats(_site(tmp_path, rounds=0))
    assert LEDGER_HEAD not in reply.content.config_records
    assert next(access_log(tmp_path).entries())["ledger-head"] is None


def test_a_ledger_that_fails_verification_publishes_no_head(tmp_path):
    context = _site(tmp_path, rounds=2)
    path = tmp_path / "ledger" / f"{DATASET}.jsonl"
    data = path.read_bytes()
    assert b'"round":1,' in data
    path.write_bytes(data.replace(b'"round":1,', b'"round":5,'))
    reply = _stats(context)
    assert LEDGER_HEAD not in reply.content.config_records


def test_a_secagg_stage_reply_is_left_as_flower_made_it(tmp_path):
    context = _site(tmp_path, rounds=1)
    stage = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "setup"})})
    msg = Message(stage, dst_node_id=11, message_type=MessageType.TRAIN)
    reply = Message(RecordDict(stage), reply_to=msg)
    out = publish_head(reply, context, protocol_stage=True)
    assert LEDGER_HEAD not in out.content.config_records
    plain = publish_head(
        Message(RecordDict(), reply_to=msg), context, protocol_stage=False
    )
    assert LEDGER_HEAD in plain.content.config_records


def test_a_decline_carries_no_head(tmp_path):
    context = _site(tmp_path, rounds=1)
    msg = Message(RecordDict(), dst_node_id=11, message_type=STATS_MESSAGE)
    declined = Decline("policy", "the site approves only mlp").reply(msg)
    out = publish_head(declined, context, protocol_stage=False)
    assert LEDGER_HEAD not in out.content.config_records
