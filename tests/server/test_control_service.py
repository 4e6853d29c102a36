"""The coordinator service over real mutual TLS on 127.0.0.1 (no SuperLink: site
changes stay in sites.json): authentication, the role table, ownership of runs,
revocation on the next call, bad input, and the audit trail of it all."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedvault.common import certs
from fedvault.common.certs import generate_site_keys
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.user_certs import issue_user_cert, read_user_cert
from fedvault.server.audit_log import verify
from fedvault.server.control_service import Governance, start_service
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.governance_client import (
    RefusedError,
    UserCredentials,
    call,
    connect,
    pb,
)
from fedvault.server.users import UserRegistry

USERS = {"ada": "admin", "alice": "researcher", "bob": "researcher", "eve": "auditor"}


@pytest.fixture
def service(tmp_path):
    ca = tmp_path / "certs"
    certs.create_ca(ca)
    certs.issue_server_cert(ca, host="localhost")
    ca_pem = (ca / "ca.crt").read_bytes()
    gov = Governance(
        tmp_path / "run" / "governance",
        CoordinatorLayout(tmp_path / "run"),
        ca_pem,
        tmp_path / "policy.toml",
        live=False,
    )
    (tmp_path / "policy.toml").write_text(
        '[limits]\nmodels = ["mlp"]\ntargets = ["target"]\nmax-rounds = 3\n'
    )
    registry = UserRegistry(gov.users)
    for name, role in {**USERS, "mallory": "admin"}.items():
        cert = issue_user_cert(ca, tmp_path / "users", name=name, role=role)
        if name != "mallory":  # issued by the CA, never enrolled
            registry.add(read_user_cert(cert.read_bytes(), ca_pem))
    registry.save()
    server, port = start_service(
        gov,
        address="127.0.0.1:0",
        server_cert=(ca / "server.crt").read_bytes(),
        server_key=(ca / "server.key").read_bytes(),
    )
    yield gov, f"localhost:{port}", tmp_path
    server.stop(grace=None)


def _as(root: Path, name: str) -> UserCredentials:
    users = root / "users"
    return UserCredentials(
        users / f"{name}.crt", users / f"{name}.key", root / "certs" / "ca.crt"
    )


def _fingerprint(*paths: Path) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in paths if p.exists())
    ).hexdigest()


def test_roles_ownership_revocation_and_the_audit_trail(service):
    gov, address, root = service
    generate_site_keys(root / "site-0")
    key = (root / "site-0" / "site.pub").read_text()
    with connect(address, _as(root, "ada")) as admin:
        site = call(
            lambda: admin.AddSite(pb.AddSiteRequest(name="site-0", public_key=key))
        )
        assert site.fingerprint.startswith("SHA256:")
        with pytest.raises(ConfigError, match="not an OpenSSH public key"):
            call(
                lambda: admin.AddSite(pb.AddSiteRequest(name="site-1", public_key="x"))
            )
    sites = json.loads(gov.layout.registry.read_text())
    assert [s["name"] for s in sites["sites"]] == ["site-0"]
    state = (gov.layout.registry, gov.users)
    before = _fingerprint(*state)

    with connect(address, _as(root, "alice")) as alice:
        with pytest.raises(RefusedError, match="may not call AddSite"):
            call(lambda: alice.AddSite(pb.AddSiteRequest(name="x", public_key=key)))
        with pytest.raises(RefusedError, match="may not call ReadAudit"):
            call(lambda: alice.ReadAudit(pb.ReadAuditRequest()))
        names = [
            s.name for s in call(lambda: alice.ListSites(pb.ListSitesRequest())).sites
        ]
        assert names == ["site-0"]
        with pytest.raises(ConfigError, match="max-rounds 3"):
            study = '[coordinator]\ntarget = "target"\n[training]\nrounds = 9\n'
            call(lambda: alice.SubmitRun(pb.SubmitRunRequest(study_toml=study)))
        with pytest.raises(ConfigError, match="not TOML"):
            call(lambda: alice.SubmitRun(pb.SubmitRunRequest(study_toml="[x")))
    assert not (gov.root / "runs.json").exists()  # nothing was started

    runs = {
        "7": {
            "run_id": "7",
            "owner": "bob",
            "run_key": "k7",
            "rounds": 1,
            "submitted": "2026-01-01T00:00:00+00:00",
            "status": "completed",
        }
    }
    (gov.root / "runs.json").write_text(json.dumps(runs))
    with connect(address, _as(root, "alice")) as alice:
        with pytest.raises(RefusedError, match="not yours"):
            call(lambda: alice.GetRun(pb.RunRef(run_id="7")))
        with pytest.raises(RefusedError, match="not yours"):
            call(lambda: alice.GetRun(pb.RunRef(run_id="999")))  # exists or not
        assert call(lambda: alice.ListRuns(pb.ListRunsRequest())).runs == []
    with connect(address, _as(root, "bob")) as bob:
        assert call(lambda: bob.GetRun(pb.RunRef(run_id="7"))).status == "completed"
        with pytest.raises(ConfigError, match="run-id: must not be empty"):
            call(lambda: bob.GetRun(pb.RunRef()))
    with (
        connect(address, _as(root, "ada")) as admin,
        pytest.raises(ConfigError, match="run '8': no such run"),
    ):
        call(lambda: admin.StopRun(pb.RunRef(run_id="8")))

    with connect(address, _as(root, "eve")) as auditor:
        assert [
            r.run_id for r in call(lambda: auditor.ListRuns(pb.ListRunsRequest())).runs
        ] == ["7"]
        assert len(call(lambda: auditor.ListUsers(pb.ListUsersRequest())).users) == 4
        lines = call(lambda: auditor.ReadAudit(pb.ReadAuditRequest())).lines
        assert json.loads(lines[0])["method"] == "AddSite"
        for attempt in (
            lambda: auditor.AddSite(pb.AddSiteRequest(name="x", public_key=key)),
            lambda: auditor.RemoveSite(pb.RemoveSiteRequest(name="site-0")),
            lambda: auditor.RevokeUser(pb.RevokeUserRequest(name="alice")),
            lambda: auditor.StopRun(pb.RunRef(run_id="7")),
            lambda: auditor.SubmitRun(pb.SubmitRunRequest(study_toml="")),
        ):
            with pytest.raises(RefusedError):
                call(attempt)
    assert _fingerprint(*state) == before  # the refusals changed nothing

    with (
        connect(address, _as(root, "mallory")) as stranger,
        pytest.raises(RefusedError, match="mallory' is not enrolled"),
    ):
        call(lambda: stranger.ListSites(pb.ListSitesRequest()))
    with connect(address, _as(root, "ada")) as admin:
        assert call(
            lambda: admin.RevokeUser(pb.RevokeUserRequest(name="alice"))
        ).revoked
    with (
        connect(address, _as(root, "alice")) as alice,
        pytest.raises(RefusedError, match="revoked"),
    ):
        call(lambda: alice.ListSites(pb.ListSitesRequest()))

    entries = [json.loads(line) for line in gov.audit.read_text().splitlines()]
    assert verify(gov.audit).seq == len(entries) - 1
    outcomes = {(e["who"], e["method"], e["outcome"]) for e in entries}
    assert ("alice", "AddSite", "denied") in outcomes
    assert ("eve", "RevokeUser", "denied") in outcomes
    assert ("mallory", "ListSites", "denied") in outcomes  # named, not enrolled
    assert ("alice", "ListSites", "denied") in outcomes  # revoked
    assert ("ada", "AddSite", "error") in outcomes
    assert ("ada", "RevokeUser", "ok") in outcomes
    assert all(e["args"].startswith("sha256:") for e in entries)


def test_a_certificate_of_another_ca_fails_the_handshake(service, tmp_path):
    _, address, root = service
    certs.create_ca(tmp_path / "other")
    issue_user_cert(tmp_path / "other", tmp_path / "o", name="ada", role="admin")
    creds = UserCredentials(
        tmp_path / "o" / "ada.crt",
        tmp_path / "o" / "ada.key",
        root / "certs" / "ca.crt",
    )
    with (
        connect(address, creds) as stub,
        pytest.raises(FederationError, match="UNAVAILABLE"),
    ):
        call(lambda: stub.ListSites(pb.ListSitesRequest(), timeout=10))
    assert "?" not in gov_whos(root)  # refused at the handshake: never reached a method


def gov_whos(root: Path) -> set[str]:
    log = root / "run" / "governance" / "audit.jsonl"
    return (
        {json.loads(line)["who"] for line in log.read_text().splitlines()}
        if log.exists()
        else set()
    )


def test_the_remote_commands_speak_for_the_user(service, monkeypatch, capsys):
    from consortium import run_fedvault

    _, address, root = service
    generate_site_keys(root / "k")
    users = root / "users"

    def remote(name, *args):
        conn = [
            "--coordinator", address, "--cert", str(users / f"{name}.crt"),
            "--key", str(users / f"{name}.key"), "--ca", str(root / "certs" / "ca.crt"),
        ]  # fmt: skip
        return run_fedvault(monkeypatch, capsys, "server", "remote", *conn, *args)

    code, out = remote("ada", "add-site", "site-9", str(root / "k" / "site.pub"))
    assert code == 0 and "site site-9 enrolled (SHA256:" in out
    code, out = remote("alice", "add-site", "site-8", str(root / "k" / "site.pub"))
    assert code == 1 and "error: refused: role 'researcher' may not call AddSite" in out
    code, out = remote("alice", "submit", str(root / "policy.toml"))
    assert code == 2 and "error: config: unknown table 'limits'" in out
    code, out = remote("eve", "audit")
    assert code == 0 and out.count('"method": "AddSite"') == 2, out
    assert '"who": "alice"' in out and '"outcome": "denied"' in out
