"""Rotating the consortium CA with an overlap window (`fedvault certs rotate-ca
begin|switch|finish`), checked with real TLS handshakes over gRPC on 127.0.0.1:
the coordinator service (mutual TLS, as users reach it) and a TLS server with the
coordinator's certificate and no client certificate (as a SuperNode reaches the
Fleet API). A site or user trusting the bundle connects to the coordinator's old
and new certificate; one trusting only the old CA fails after the switch, in one
clear line."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from cryptography import x509
from trained_run import fedvault
from typer.testing import CliRunner

from fedvault.client.flower_log import explain_failure
from fedvault.common import certs
from fedvault.common.errors import FederationError
from fedvault.common.user_certs import issue_user_cert, read_user_cert
from fedvault.server.certs_cli import certs_app
from fedvault.server.control_service import Governance, start_service
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.governance_client import UserCredentials, call, connect, pb
from fedvault.server.users import UserRegistry


def _rotate(step: str, ca: Path) -> str:
    result = CliRunner().invoke(certs_app, ["rotate-ca", step, str(ca)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _refused(monkeypatch, capsys, step: str, ca: Path) -> str:
    """A step out of order: exit 2 and one ``error:`` line (returned)."""
    code, out, err = fedvault(monkeypatch, capsys, "certs", "rotate-ca", step, ca)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    return " ".join(err.split())


class Coordinator:
    """The coordinator's two TLS endpoints with the certificates in ``ca`` as they
    are now: the service (mutual TLS) and a Fleet-like server (server TLS only)."""

    def __init__(self, root: Path) -> None:
        ca = root / "certs"
        ca_pem = (ca / "ca.crt").read_bytes()
        self.gov = Governance(
            root / "run" / "governance",
            CoordinatorLayout(root / "run"),
            ca_pem,
            root / "policy.toml",
            live=False,
        )
        pair = ((ca / "server.key").read_bytes(), (ca / "server.crt").read_bytes())
        self.service, port = start_service(
            self.gov, address="127.0.0.1:0", server_cert=pair[1], server_key=pair[0]
        )
        self.address = f"localhost:{port}"
        self.fleet = grpc.server(ThreadPoolExecutor(max_workers=2))
        fleet_port = self.fleet.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([pair])
        )
        self.fleet.start()
        self.fleet_address = f"localhost:{fleet_port}"

    def close(self) -> None:
        self.service.stop(grace=None)
        self.fleet.stop(grace=None)


def _names(path: Path) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return cert.subject.rfc4514_string(), sorted(map(str, alt.value))


def _site_connects(coordinator: Coordinator, ca_file: Path) -> str:
    """A SuperNode's TLS handshake with ``ca_file`` as its ca-certificate: ``ok``
    (the handshake passed; the method is unknown here), else what the site's
    operator is told."""
    credentials = grpc.ssl_channel_credentials(ca_file.read_bytes())
    with grpc.secure_channel(coordinator.fleet_address, credentials) as channel:
        try:
            channel.unary_unary("/flwr.proto.Fleet/Ping")(b"", timeout=10)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return "ok"
            return explain_failure(str(exc.details()))
    return "ok"


def _user_connects(coordinator: Coordinator, user: UserCredentials) -> str:
    with connect(coordinator.address, user) as stub:
        try:
            call(lambda: stub.ListSites(pb.ListSitesRequest(), timeout=10))
        except FederationError as exc:
            return str(exc)
    return "ok"


def test_rotate_ca_with_an_overlap_window(tmp_path, monkeypatch, capsys):
    ca = tmp_path / "certs"
    certs.create_ca(ca)
    certs.issue_server_cert(ca, host="localhost", ips=("10.0.0.5",))
    ada = issue_user_cert(ca, tmp_path / "users", name="ada", role="admin")
    registry = UserRegistry(tmp_path / "run" / "governance" / "users.json")
    registry.add(read_user_cert(ada.read_bytes(), (ca / "ca.crt").read_bytes()))
    registry.save()
    old_only = tmp_path / "old-ca.crt"  # a site that never installs the bundle
    shutil.copy(ca / "ca.crt", old_only)
    bundle = tmp_path / "bundle.crt"  # a site or user that does
    users = tmp_path / "users"

    def ada_with(ca_file: Path) -> UserCredentials:
        return UserCredentials(users / "ada.crt", users / "ada.key", ca_file)

    out = _rotate("begin", ca)
    assert f"{ca / 'ca.crt'} now holds the old and the new CA" in out
    shutil.copy(ca / "ca.crt", bundle)
    assert "a rotation has begun; `certs rotate-ca switch` is next" in _refused(
        monkeypatch, capsys, "begin", ca
    )
    coordinator = Coordinator(tmp_path)  # still the old certificate
    try:
        for ca_file in (bundle, old_only):
            assert _site_connects(coordinator, ca_file) == "ok"
            assert _user_connects(coordinator, ada_with(ca_file)) == "ok"
    finally:
        coordinator.close()

    before = _names(ca / "server.crt")
    out = _rotate("switch", ca)
    assert "now from the new CA" in out and (ca / "previous" / "ca.key").exists()
    assert _names(ca / "server.crt") == before  # the names sites dial
    assert "<IPAddress(value=10.0.0.5)>" in before[1]
    assert not (ca / "next").exists()
    coordinator = Coordinator(tmp_path)  # restarted: the new certificate
    try:
        assert _site_connects(coordinator, bundle) == "ok"
        assert _user_connects(coordinator, ada_with(bundle)) == "ok"  # old-CA user
        assert _site_connects(coordinator, old_only) == (
            "the coordinator's certificate is not trusted by ca-certificate, or "
            "does not name the address in `coordinator`"
        )
        refused = _user_connects(coordinator, ada_with(old_only))
        assert refused.startswith("coordinator service: UNAVAILABLE: the coordinator")
        assert "install the consortium's current ca.crt" in refused
        # users get certificates of the new CA during the window
        shutil.move(users / "ada.crt", tmp_path / "ada-old.crt")
        (users / "ada.key").unlink()
        fresh = issue_user_cert(ca, users, name="ada", role="admin")
        registry = UserRegistry(coordinator.gov.users)
        registry.revoke("ada")
        registry.add(read_user_cert(fresh.read_bytes(), (ca / "ca.crt").read_bytes()))
        registry.save()
        assert _user_connects(coordinator, ada_with(bundle)) == "ok"
    finally:
        coordinator.close()

    out = _rotate("finish", ca)
    assert "old CA dropped" in out and not (ca / "previous").exists()
    assert len(list((ca / "retired").glob("ca-*.crt"))) == 1
    assert (ca / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 1
    certs.verify_server_cert(ca)
    coordinator = Coordinator(tmp_path)
    try:
        assert _site_connects(coordinator, ca / "ca.crt") == "ok"
        assert _user_connects(coordinator, ada_with(ca / "ca.crt")) == "ok"
        assert _site_connects(coordinator, old_only) != "ok"
    finally:
        coordinator.close()


def test_rotate_ca_steps_out_of_order_are_one_line(tmp_path, monkeypatch, capsys):
    ca = tmp_path / "certs"
    certs.create_ca(ca)
    before = (ca / "ca.crt").read_bytes()
    for step in ("switch", "finish"):
        err = _refused(monkeypatch, capsys, step, ca)
        assert "no rotation is under way; `certs rotate-ca begin` starts one" in err
    _rotate("begin", ca)
    err = _refused(monkeypatch, capsys, "switch", ca)
    assert "server.crt: not found; nothing to switch" in err
    err = _refused(monkeypatch, capsys, "finish", ca)
    assert "a rotation has begun; `certs rotate-ca switch` is next" in err
    assert (ca / "ca.crt").read_bytes().startswith(before)  # the old CA first
    assert (ca / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 2
