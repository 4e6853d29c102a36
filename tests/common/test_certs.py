"""Certificates and site keys: structure, Flower's own loaders, TLS, tamper, expiry."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedvault.common import certs
from fedvault.common.errors import ConfigError, IntegrityError


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "certs"
    certs.create_ca(directory)
    certs.issue_server_cert(
        directory, host="coordinator.example.org", ips=("10.1.2.3",)
    )
    return directory


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_a_ca_and_its_key_is_private(pki):
    ca = _cert(pki / certs.CA_CERT)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.issuer == ca.subject
    assert stat.S_IMODE((pki / certs.CA_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / certs.SERVER_KEY).stat().st_mode) == 0o600


def test_server_cert_names_every_address_sites_dial(pki):
    cert = _cert(pki / certs.SERVER_CERT)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "coordinator.example.org",
        "localhost",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    certs.verify_server_cert(pki)  # issued by this CA: no exception


def test_nothing_is_ever_overwritten(pki):
    before = (pki / certs.CA_KEY).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        certs.create_ca(pki)
    with pytest.raises(ConfigError, match="already exists"):
        certs.issue_server_cert(pki, host="other")
    assert (pki / certs.CA_KEY).read_bytes() == before


def test_bad_host_and_ip_are_refused(tmp_path):
    certs.create_ca(tmp_path)
    with pytest.raises(ConfigError, match="ip"):
        certs.issue_server_cert(tmp_path, host="h", ips=("not-an-ip",))
    with pytest.raises(ConfigError, match="host"):
        certs.issue_server_cert(tmp_path, host="two words")
    with pytest.raises(ConfigError, match="certs init"):
        certs.issue_server_cert(tmp_path / "empty", host="h")


def test_server_cert_of_another_ca_is_flagged(pki, tmp_path):
    other = tmp_path / "other"
    certs.create_ca(other)
    (pki / certs.CA_CERT).unlink()
    (pki / certs.CA_CERT).write_bytes((other / certs.CA_CERT).read_bytes())
    with pytest.raises(IntegrityError):
        certs.verify_server_cert(pki)
    states = {s.path.name: s.state for s in certs.check_certificates(pki)}
    assert states == {"ca.crt": "ok", "server.crt": "invalid"}


def test_tampered_server_cert_is_flagged(pki):
    der = bytearray(
        _cert(pki / certs.SERVER_CERT).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    path = pki / certs.SERVER_CERT
    path.write_bytes(tampered.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(IntegrityError):
        certs.verify_server_cert(pki)


def test_expiry_states(pki):
    now = dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(days=certs.SERVER_DAYS - 10)
    late = now + dt.timedelta(days=certs.SERVER_DAYS + 1)
    by_state = {s.path.name: s.state for s in certs.check_certificates(pki, now=soon)}
    assert by_state == {"ca.crt": "ok", "server.crt": "expiring"}
    by_state = {s.path.name: s.state for s in certs.check_certificates(pki, now=late)}
    assert by_state["server.crt"] == "expired"
    fresh = certs.check_certificates(pki, now=now)
    assert all(s.state == "ok" and s.days_left > 300 for s in fresh)


def test_check_needs_certificates(tmp_path):
    with pytest.raises(ConfigError, match=r"no certificates"):
        certs.check_certificates(tmp_path)


def test_site_keys_are_openssh_p384_and_flower_loads_them(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    private_path, public_path = certs.generate_site_keys(tmp_path, comment="site-a")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert public_path.read_text().strip().endswith(" site-a")
    private = serialization.load_ssh_private_key(private_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    public = certs.load_site_public_key(public_path)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert try_load_public_key(public_path)  # Flower's own `supernode register` check
    with pytest.raises(ConfigError):
        certs.generate_site_keys(tmp_path)


def test_non_ec_public_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "ed.pub"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    with pytest.raises(ConfigError, match="EC public key"):
        certs.load_site_public_key(path)
    (tmp_path / "junk.pub").write_text("ecdsa-sha2-nistp384 AAAA garbage")
    with pytest.raises(ConfigError, match="OpenSSH"):
        certs.load_site_public_key(tmp_path / "junk.pub")


def _handshake(pki, ca_file, server_hostname):
    """One TLS handshake on 127.0.0.1:0 with the coordinator's certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / certs.SERVER_CERT, pki / certs.SERVER_KEY)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with (
            contextlib.suppress(OSError),  # the client may refuse us
            conn,
            server_ctx.wrap_socket(conn, server_side=True) as tls,
        ):
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.sendall(b"x")
    finally:
        thread.join(timeout=5)
        listener.close()


def test_tls_handshake_needs_our_ca_and_a_matching_san(pki, tmp_path):
    _handshake(pki, pki / certs.CA_CERT, "coordinator.example.org")
    _handshake(pki, pki / certs.CA_CERT, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        _handshake(pki, pki / certs.CA_CERT, "elsewhere.example.org")
    other = tmp_path / "other"
    certs.create_ca(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pki, other / certs.CA_CERT, "localhost")
