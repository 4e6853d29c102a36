"""The coordinator service's parts: the role table against docs/governance.md, the
audit log's hash chain, user certificates and the user list, the consortium's
limits on studies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedvault.common import certs
from fedvault.common.errors import ConfigError, IntegrityError
from fedvault.common.user_certs import ROLES, issue_user_cert, read_user_cert
from fedvault.proto import coordinator_pb2
from fedvault.server import rbac
from fedvault.server.audit_log import AuditLog, digest, verify
from fedvault.server.study_policy import StudyLimits, check_study, parse_study
from fedvault.server.users import UnknownUserError, UserRegistry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "governance.md"


def _docs_table() -> dict[str, dict[str, str]]:
    text = DOCS.read_text()
    header = "| method | admin | researcher | auditor |"
    block = text[text.index(header) :].split("\n\n")[0].splitlines()
    roles = [c.strip() for c in block[0].strip("|").split("|")][1:]
    table = {}
    for row in block[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(roles, cells[1:], strict=True))
    return table


def test_every_role_method_pair_matches_the_docs_table():
    docs = _docs_table()
    service = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    methods = {m.name for m in service.methods}
    assert set(docs) == methods == set(rbac.TABLE)
    assert tuple(next(iter(docs.values()))) == ROLES
    for method in methods:
        for role in ROLES:
            expected = docs[method][role]
            if expected == "no":
                with pytest.raises(rbac.AccessDeniedError):
                    rbac.authorize(role, method)
            else:
                assert rbac.authorize(role, method) == expected, (role, method)


@pytest.mark.parametrize("role", ["root", "", "Admin"])
def test_unknown_roles_and_methods_are_denied(role):
    with pytest.raises(rbac.AccessDeniedError):
        rbac.authorize(role, "ListSites")
    with pytest.raises(rbac.AccessDeniedError):
        rbac.authorize("admin", "DropEverything")


def _log(tmp_path: Path, n: int = 4) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append(
            who=f"u{i}", role="admin", method="AddSite", args=digest(b"%d" % i),
            outcome="ok", detail=f"site {i}",
        )
    return log.path


def test_audit_chain_verifies_and_names_what_was_changed(tmp_path):
    path = _log(tmp_path)
    head = verify(path)
    assert head.seq == 3
    lines = path.read_text().splitlines(keepends=True)
    original = "".join(lines)
    assert json.loads(lines[1])["prev"] == json.loads(lines[0])["hash"]

    edited = lines.copy()
    edited[2] = edited[2].replace('"site 2"', '"site 9"')
    path.write_text("".join(edited))
    with pytest.raises(IntegrityError, match=r"line 3 \(seq 2\): edited"):
        verify(path)

    path.write_text("".join(lines[:1] + lines[2:]))
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 2\): expected seq 1"):
        verify(path)

    path.write_text("".join([lines[0], lines[2], lines[1], lines[3]]))
    with pytest.raises(IntegrityError, match="line 2"):
        verify(path)

    path.write_text(original)
    verify(path)


def test_any_single_byte_change_is_caught(tmp_path):
    path = _log(tmp_path, 3)
    data = path.read_bytes()
    for offset in range(0, len(data), 7):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        path.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError):
            verify(path)
    path.write_bytes(data)
    assert verify(path).seq == 2


def test_appending_after_a_damaged_tail_is_refused(tmp_path):
    path = _log(tmp_path, 2)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(IntegrityError, match="damaged"):
        AuditLog(path).append(
            who="x", role="admin", method="AddSite", args="", outcome="ok"
        )


@pytest.fixture
def ca(tmp_path):
    certs.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_user_certificate_names_user_and_role(ca, tmp_path):
    cert = issue_user_cert(ca, tmp_path / "u", name="alice", role="researcher")
    assert (tmp_path / "u" / "alice.key").stat().st_mode & 0o077 == 0
    ident = read_user_cert(cert.read_bytes(), (ca / "ca.crt").read_bytes())
    assert (ident.name, ident.role) == ("alice", "researcher")
    certs.create_ca(tmp_path / "other")
    with pytest.raises(IntegrityError):
        read_user_cert(cert.read_bytes(), (tmp_path / "other" / "ca.crt").read_bytes())
    with pytest.raises(ConfigError, match="role"):
        issue_user_cert(ca, tmp_path / "u", name="bob", role="root")
    with pytest.raises(ConfigError, match="user name"):
        issue_user_cert(ca, tmp_path / "u", name="../bob", role="admin")


def test_user_list_refuses_unknown_revoked_and_other_certificates(ca, tmp_path):
    ca_pem = (ca / "ca.crt").read_bytes()
    a = issue_user_cert(ca, tmp_path / "a", name="alice", role="researcher")
    b = issue_user_cert(ca, tmp_path / "b", name="alice", role="admin")
    first = read_user_cert(a.read_bytes(), ca_pem)
    second = read_user_cert(b.read_bytes(), ca_pem)
    registry = UserRegistry(tmp_path / "users.json")
    with pytest.raises(UnknownUserError, match="not enrolled"):
        registry.authenticate(first)
    registry.add(first)
    registry.save()
    reread = UserRegistry(tmp_path / "users.json")
    assert reread.authenticate(first).role == "researcher"
    with pytest.raises(UnknownUserError, match="not the enrolled one"):
        registry.authenticate(second)
    with pytest.raises(ConfigError, match="already enrolled"):
        registry.add(second)
    registry.revoke("alice")
    registry.save()
    with pytest.raises(UnknownUserError, match="revoked"):
        UserRegistry(tmp_path / "users.json").authenticate(first)
    with pytest.raises(ConfigError, match="was revoked"):
        registry.add(first)


STUDY = """
[coordinator]
target = "target"
expected-sites = 2
[training]
rounds = 2
epsilon = 2.0
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("rounds = 2", "rounds = 50"), "max-rounds 20"),
        (("epsilon = 2.0", "epsilon = 9.0"), "max-epsilon 3"),
        (('target = "target"', 'target = "income"'), "target 'income'"),
        (("rounds = 2", 'rounds = 2\nmodel = "cnn"'), "model 'cnn'"),
        (("epsilon = 2.0", "dp = false"), "dp = false"),
    ],
)
def test_studies_outside_the_limits_are_refused(tmp_path, change, message):
    limits = StudyLimits(models=["mlp"], targets=["target"], max_epsilon=3.0)
    check_study(limits, parse_study(STUDY, base=tmp_path))
    study = parse_study(STUDY.replace(*change), base=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_study(limits, study)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ('["age", "income"]', "column 'income' is not allowed (allowed: age, bmi)"),
        (None, "features not given (a study of every column)"),
    ],
)
def test_studies_of_columns_outside_the_limits_are_refused(
    tmp_path, features, message
):
    limits = StudyLimits(targets=["target"], columns=["age", "bmi"])
    named = STUDY.replace("rounds = 2", 'rounds = 2\nfeatures = ["bmi", "age"]')
    check_study(limits, parse_study(named, base=tmp_path))
    text = STUDY
    if features is not None:
        text = STUDY.replace("rounds = 2", f"rounds = 2\nfeatures = {features}")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_study(limits, parse_study(text, base=tmp_path))
    check_study(StudyLimits(targets=["target"]), parse_study(text, base=tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[coordinator\n", "not TOML"),
        (STUDY.replace("rounds = 2", "features = 3"), "features: expected a list"),
        (STUDY.replace("rounds = 2", 'features = ["a", "a"]'), "named twice"),
        (STUDY + '[sites]\nx = "x.pub"\n', "enrolled by an admin"),
        (STUDY.replace("[training]", 'test-data = "/etc/passwd"\n[training]'),
         "test-data"),
        (STUDY.replace("rounds = 2", "rounds = -1"), "rounds"),
    ],
)
def test_malformed_studies_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(text, base=tmp_path)


def test_an_expired_user_certificate_is_refused(ca, tmp_path):
    import datetime as dt

    cert = issue_user_cert(ca, tmp_path / "u", name="alice", role="auditor", days=1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    with pytest.raises(IntegrityError, match="expired"):
        read_user_cert(cert.read_bytes(), (ca / "ca.crt").read_bytes(), now=later)
