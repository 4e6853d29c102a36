"""Site-side approval ([approval] of the site's policy file): a run the site has
not approved is declined with reason `policy` by the real ClientApp before any
data is read; an approved one is not declined by it."""

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedvault.client import admission
from fedvault.client.app import app as client_app
from fedvault.client.approval import (
    Approval,
    approve,
    ca_fingerprint,
    check_approval,
    load_approval,
    run_schema_hash,
)
from fedvault.common import certs
from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset
from fedvault.common.protocol import STATS_MESSAGE
from fedvault.common.wire import summary_from_bytes

PRIVACY = '[privacy]\ndataset-id = "bc"\nepsilon-max = 1.0\ndelta = 1e-5\n'


def _site(tmp_path, approval: str):
    data = tmp_path / "site.parquet"
    default_dataset().iloc[:200].to_parquet(data, index=False)
    state = tmp_path / "state"
    state.mkdir()
    site = '[site]\nca-certificate = "../certs/ca.crt"\n'
    (state / "site.toml").write_text(site + PRIVACY + approval)
    return {"site-name": "st-mary", "data": str(data), "state": str(state)}


def _context(node_config, target="target", **training):
    run_config = TrainingConfig(**({"rounds": 2} | training)).to_run_config()
    run_config |= {"target": target, "run-key": "run-1"}
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def reads(monkeypatch):
    calls = []
    real = admission.load_site_data

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(admission, "load_site_data", spy)
    return calls


@pytest.fixture
def ca(tmp_path):
    certs.create_ca(tmp_path / "certs")
    return tmp_path / "certs" / "ca.crt"


@pytest.mark.parametrize(
    ("approval", "request_", "fragment"),
    [
        ('[approval]\ntargets = ["other"]\n', {}, "predicts 'target'"),
        ('[approval]\nmodels = ["logreg"]\n', {}, "model 'mlp'"),
        ('[approval]\ncoordinator-ca = "SHA256:00"\n', {}, "not the coordinator CA"),
        ("[approval]\ntargets = 3\n", {}, "cannot be read"),
        (
            '[approval]\ncolumns = ["mean radius"]\n',
            {"features": ("mean radius", "mean area")},
            "column 'mean area'; the site approves only mean radius",
        ),
        (  # every column, and the site's data holds one it does not approve
            '[approval]\ncolumns = ["mean radius"]\n',
            {},
            "every column, column 'mean texture' too",
        ),
        (
            '[approval]\nschema-hash = "sha256:00"\n',
            {"features": ("mean radius",)},
            "[approval] schema-hash",
        ),
    ],
)
def test_an_unapproved_run_is_declined_before_any_data_is_read(
    tmp_path, ca, reads, approval, request_, fragment
):
    node = _site(tmp_path, approval)
    message = Message(RecordDict(), dst_node_id=7, message_type=STATS_MESSAGE)
    reply = client_app(message, _context(node, **request_))
    record = reply.content.config_records["decline"]
    assert str(record["reason"]) == "policy"
    assert fragment in str(record["detail"])
    assert reads == []


def test_an_approved_run_passes_the_site_approval(tmp_path, ca, reads):
    fingerprint = ca_fingerprint(ca)
    node = _site(
        tmp_path,
        '[approval]\ntargets = ["target"]\nmodels = ["mlp"]\n'
        f'coordinator-ca = "{fingerprint.lower()}"\n',
    )
    message = Message(RecordDict(), dst_node_id=7, message_type=STATS_MESSAGE)
    reply = client_app(message, _context(node))
    assert "decline" not in reply.content.config_records
    assert reads  # the stats were computed from the site's rows


def test_approval_keys_parse_and_openssl_fingerprints_match(tmp_path, ca):
    path = tmp_path / "state" / "site.toml"
    _site(tmp_path, "")
    assert load_approval(path).targets is None
    openssl = "sha256 Fingerprint=" + ":".join(
        ca_fingerprint(ca)[7:][i : i + 2] for i in range(0, 64, 2)
    )
    approval = Approval(coordinator_ca=openssl, ca_file=ca)
    settings = TrainingConfig(rounds=2)
    assert check_approval(approval, settings, {"target": "t"}) is None
    assert approve(path, settings, {"target": "t"}) is None


def _stats(node, **training):
    message = Message(RecordDict(), dst_node_id=7, message_type=STATS_MESSAGE)
    return client_app(message, _context(node, **training)).content


def test_a_run_of_approved_columns_summarizes_only_those(tmp_path, ca, reads):
    features = ("mean radius", "mean area")
    schema = run_schema_hash("target", reversed(features))  # order does not matter
    node = _site(
        tmp_path,
        f'[approval]\ncolumns = ["mean radius", "mean area", "mean texture"]\n'
        f'schema-hash = "{schema.upper()}"\n',
    )
    content = _stats(node, features=features)
    assert "decline" not in content.config_records
    summary = summary_from_bytes(bytes(content.config_records["site"]["summary"]))
    assert sorted(summary["numeric"]) == sorted(features)
    assert reads


def test_a_feature_column_the_site_lacks_is_a_data_decline(tmp_path, ca):
    node = _site(tmp_path, "")
    content = _stats(node, features=("mean radius", "blood type"))
    record = content.config_records["decline"]
    assert str(record["reason"]) == "data"
    assert "column 'blood type' of the run's features" in str(record["detail"])
    content = _stats(node, features=("target",))
    assert "names its target 'target'" in str(content.config_records["decline"])
