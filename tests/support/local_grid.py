"""An in-process Flower grid for coordinator tests: real ServerApp-side code and real
ClientApps (with their mods), no SuperLink, no Ray. Every message is copied on the way
in, as serialization would, and every reply the coordinator receives is kept."""

import types
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import tomli_w
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset

Drop = Callable[[int, Message], bool]


class LocalGrid(Grid):
    def __init__(self, app, contexts: dict[int, Context], drop: Drop | None = None):
        self.app, self.contexts, self.drop = app, contexts, drop
        self.received: list[Message] = []
        self.sent: list[Message] = []
        self.waiting: list[Message] = []

    def set_run(self, run):  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self):
        return types.SimpleNamespace(run_id=1)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        """Deliver each message to its site's ClientApp at once (in process); the
        replies wait for :meth:`pull_messages`, as on a SuperLink."""
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            incoming = Message(
                _over_the_wire(message.content),
                dst_node_id=node,
                message_type=message.metadata.message_type,
                group_id=message.metadata.group_id,
            )
            message_id = message.object_id
            message.metadata.__dict__["_message_id"] = message_id  # as Flower does
            ids.append(message_id)
            incoming.metadata.__dict__["_message_id"] = message_id
            self.sent.append(incoming)
            if self.drop is not None and self.drop(node, incoming):
                continue
            try:
                reply = self.app(incoming, self.contexts[node])
            except Exception as exc:  # what Flower's runtime does with a crash
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc))
                reply = Message(error, reply_to=incoming)
            self.waiting.append(reply)
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        got = [r for r in self.waiting if r.metadata.reply_to_message_id in wanted]
        self.waiting = [r for r in self.waiting if r not in got]
        self.received.extend(got)
        return got

    def send_and_receive(self, messages, *, timeout=None):
        return list(self.pull_messages(self.push_messages(messages)))


def _over_the_wire(content: RecordDict) -> RecordDict:
    """The content as the site receives it: serialised and parsed, a copy."""
    return recorddict_from_proto(recorddict_to_proto(content))


def contexts_for(nodes: Iterable[int], run_config: dict) -> dict[int, Context]:
    nodes = list(nodes)
    return {
        node: Context(
            run_id=1,
            node_id=node,
            node_config={"partition-id": pid, "num-partitions": len(nodes)},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        for pid, node in enumerate(nodes)
    }


@pytest.fixture
def local_grid(monkeypatch):
    # The ServerApp runtime sets who "we" are; new instruction messages need it.
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    return LocalGrid


@pytest.fixture
def make_contexts():
    return contexts_for


def _schema(tmp_path, frame):
    """The embedded data's schema contract, as fedvault simulate writes it: the
    features' published ranges and the label classes."""
    path = tmp_path / "schema.toml"
    if not path.exists():
        columns = {
            c: {
                "type": "float",
                "role": "feature",
                "min": float(frame[c].min()),
                "max": float(frame[c].max()),
            }
            for c in frame.columns
            if c != "target"
        }
        columns["target"] = {
            "type": "category",
            "role": "target",
            "categories": ["0", "1"],
        }
        path.write_text(tomli_w.dumps({"dataset": {"name": "bc"}, "columns": columns}))
    return path


def site_run_config(
    tmp_path, nodes, *, require_secagg=(), min_noise=None, budget=None, **training
):
    """The run config of an in-process federation of ``len(nodes)`` sites on the
    embedded data (each site's rows in a file, its own policy in its state folder),
    with a held-out test file; ``training`` overrides TrainingConfig fields.
    ``min_noise`` and ``budget`` (epsilon-max) override a site's policy by index."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    frame = default_dataset()
    test = frame.sample(frac=0.2, random_state=0)
    rest = frame.drop(test.index).sample(frac=1.0, random_state=0)
    test_file = tmp_path / "test.parquet"
    test.to_parquet(test_file, index=False)
    settings = {"rounds": 2, "epsilon": 3.0, "seed": 3} | training
    run_config = TrainingConfig(**settings).to_run_config() | {
        "target": "target",
        "out-dir": str(tmp_path / "out"),
        "test-data": str(test_file),
        "expected-sites": len(nodes),
        "excluded-sites": "{}",
        "client-threads": 1,
    }
    for pid, rows in enumerate(np.array_split(np.arange(len(rest)), len(nodes))):
        part = rest.iloc[rows]
        data = tmp_path / f"site-{pid}.parquet"
        part.to_parquet(data, index=False)
        state = tmp_path / f"state-{pid}"
        state.mkdir()
        (state / "site.toml").write_text(
            "[privacy]\n"
            f'dataset-id = "bc"\nepsilon-max = {(budget or {}).get(pid, 10.0)}\n'
            "delta = 1e-5\n"
            f"min-noise-multiplier = {(min_noise or {}).get(pid, 0.3)}\n"
            "max-grad-norm = 1.0\n"
            f"require-secure-aggregation = {str(pid in require_secagg).lower()}\n"
            # as fedvault simulate writes them: a --no-dp run's sites allow it
            f"allow-non-private = {str(not settings.get('dp', True)).lower()}\n"
        )
        run_config |= {
            f"site.{pid}.schema": str(_schema(tmp_path, frame)),
            f"site.{pid}.data": str(data),
            f"site.{pid}.name": f"site-{pid + 1}",
            f"site.{pid}.state": str(state),
        }
    return run_config
