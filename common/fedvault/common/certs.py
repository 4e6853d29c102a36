"""Consortium certificates and site keys, made with ``cryptography`` alone.

Three kinds of files, each written once and never overwritten (but for
:func:`renew_server_cert`, which replaces ``server.crt`` with a later one):

- the consortium CA (``ca.crt`` + ``ca.key``), kept by whoever runs the coordinator;
- the coordinator's TLS certificate (``server.crt`` + ``server.key``), signed by the CA,
  whose subject alternative names cover every name and address sites dial, plus
  ``localhost``/``127.0.0.1`` for the coordinator's own loopback Control API;
- a site's authentication key pair (``site.key`` + ``site.pub``): an EC SECP384R1 key in
  OpenSSH format, which Flower's SuperNode authentication loads. The private key never
  leaves the site; the coordinator registers only the public key.

Private keys are written with mode 0600, and a site key that other users can read
is refused (:func:`check_site_private_key`), as a data key is. A site key is named
by its fingerprint in OpenSSH's format (:func:`fingerprint`, what ``ssh-keygen -l``
prints), on the site and on the coordinator alike. :func:`check_certificates`
reports each certificate's remaining lifetime so that operators are warned before
expiry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvault.common.errors import ConfigError, IntegrityError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
SITE_KEY, SITE_PUB = "site.key", "site.pub"

CA_DAYS = 3650
SERVER_DAYS = 397
WARN_DAYS = 30
_CLOCK_SKEW = dt.timedelta(minutes=5)

CertState = Literal["ok", "expiring", "expired", "invalid"]


@dataclass(frozen=True)
class CertStatus:
    """One certificate file and how long it remains valid."""

    path: Path
    subject: str
    not_after: dt.datetime
    days_left: float
    state: CertState
    detail: str = ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_new(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` (never overwrite); private files get mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite it")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    directory: Path, *, name: str = "fedvault consortium CA", days: int = CA_DAYS
) -> Path:
    """Create a consortium CA in ``directory``; returns the certificate's path."""
    _refuse_existing(directory / CA_CERT, directory / CA_KEY)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    _write_new(directory / CA_KEY, _pem_key(key), private=True)
    _write_new(
        directory / CA_CERT,
        cert.public_bytes(serialization.Encoding.PEM),
        private=False,
    )
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY).read_bytes(), password=None
        )
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no CA in {directory} ({exc.filename} missing); run `certs init` first"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{directory}: unreadable CA files ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY}: not an EC private key")
    return cert, key


def _alt_names(hosts: list[str], ips: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(hosts)]
    for raw in dict.fromkeys(ips):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(raw)))
        except ValueError:
            raise ConfigError(f"ip: {raw!r} is not an IP address") from None
    return names


def issue_server_cert(
    directory: Path,
    *,
    host: str,
    ips: tuple[str, ...] = (),
    days: int = SERVER_DAYS,
) -> Path:
    """Issue the coordinator's TLS certificate from the CA in ``directory``.

    SANs: ``host`` (the name sites dial), every address in ``ips``, and ``localhost``
    and ``127.0.0.1`` for the coordinator's own loopback Control API.
    """
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"host: {host!r} is not a host name")
    _refuse_existing(directory / SERVER_CERT, directory / SERVER_KEY)
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    now = _now()
    days = min(days, max(1, (ca_cert.not_valid_after_utc - now).days))
    alt = _alt_names([host, "localhost"], [*ips, "127.0.0.1"])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(directory / SERVER_KEY, _pem_key(key), private=True)
    _write_new(
        directory / SERVER_CERT,
        cert.public_bytes(serialization.Encoding.PEM),
        private=False,
    )
    return directory / SERVER_CERT


def renew_server_cert(directory: Path, *, days: int = SERVER_DAYS) -> Path:
    """Re-issue ``server.crt`` in ``directory`` for ``days`` more (capped by the
    CA's own lifetime): same key, subject and SANs, signed by the CA; the file is
    replaced atomically (the only certificate fedvault ever replaces). A running
    coordinator reads it when it starts again (``server stop``, ``server resume``).

    Raises:
        ConfigError: no CA, no certificate to renew, or one not issued by the CA.
    """
    path = directory / SERVER_CERT
    try:
        old = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no certificate to renew; issue one first") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None
    try:
        verify_server_cert(directory)
    except IntegrityError:
        raise ConfigError(f"{path}: not issued by {directory / CA_CERT}") from None
    ca_cert, ca_key = _load_ca(directory)
    now = _now()
    days = min(days, max(1, (ca_cert.not_valid_after_utc - now).days))
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca_cert.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(ca_key, hashes.SHA384())
    tmp = directory / f".{SERVER_CERT}.renew"
    tmp.unlink(missing_ok=True)
    _write_new(tmp, cert.public_bytes(serialization.Encoding.PEM), private=False)
    os.replace(tmp, path)
    return path


def generate_site_keys(directory: Path, *, comment: str = "") -> tuple[Path, Path]:
    """Create a site's SuperNode key pair (EC SECP384R1, OpenSSH format).

    Returns (private key path, public key path). Only the public key is ever shared.
    """
    private_path, public_path = directory / SITE_KEY, directory / SITE_PUB
    _refuse_existing(private_path, public_path)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    suffix = f" {comment}".encode() if comment and comment.isprintable() else b""
    _write_new(private_path, private, private=True)
    _write_new(public_path, public + suffix + b"\n", private=False)
    return private_path, public_path


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load and check a site's OpenSSH public key (EC on a NIST curve)."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"public key file not found: {path}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise ConfigError(f"{path}: not an EC public key on a NIST P curve")
    return key


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...``: the key's fingerprint as ``ssh-keygen -l`` prints it."""
    line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_site_private_key(path: Path) -> None:
    """Refuse a site's private key that other users could read (as a data key).

    Raises:
        ConfigError: naming the file and the fix, when it is missing or its mode
            gives group or others any access.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ConfigError(f"private-key: {path} not found") from None
    if mode & 0o077:
        raise ConfigError(
            f"private-key: {path}: permissions {mode:04o} let other users read "
            f"the site's key; run: chmod 600 {path}"
        )


def verify_server_cert(directory: Path) -> None:
    """Raise :class:`IntegrityError` unless ``server.crt`` was issued by ``ca.crt``."""
    try:
        ca = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        cert = x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        raise IntegrityError("server certificate not issued by this CA") from None


def cert_status(
    path: Path, *, warn_days: float = WARN_DAYS, now: dt.datetime | None = None
) -> CertStatus:
    """Remaining validity of one PEM certificate file."""
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        epoch = dt.datetime.fromtimestamp(0, dt.UTC)
        return CertStatus(path, "?", epoch, 0.0, "invalid", f"unreadable: {exc}")
    not_after = cert.not_valid_after_utc
    days_left = (not_after - now).total_seconds() / 86400
    state: CertState = "ok"
    if days_left <= 0 or now < cert.not_valid_before_utc:
        state = "expired"
    elif days_left <= warn_days:
        state = "expiring"
    return CertStatus(path, cert.subject.rfc4514_string(), not_after, days_left, state)


def check_certificates(
    directory: Path, *, warn_days: float = WARN_DAYS, now: dt.datetime | None = None
) -> list[CertStatus]:
    """Status of every ``*.crt`` in ``directory``; ``server.crt`` is also checked
    against ``ca.crt`` when both are present (state ``invalid`` if not issued by it)."""
    paths = sorted(directory.glob("*.crt"))
    if not paths:
        raise ConfigError(f"no certificates (*.crt) in {directory}")
    statuses = [cert_status(p, warn_days=warn_days, now=now) for p in paths]
    names = {p.name for p in paths}
    if {CA_CERT, SERVER_CERT} <= names:
        try:
            verify_server_cert(directory)
        except IntegrityError:
            statuses = [
                CertStatus(
                    s.path,
                    s.subject,
                    s.not_after,
                    s.days_left,
                    "invalid",
                    "not issued by ca.crt",
                )
                if s.path.name == SERVER_CERT
                else s
                for s in statuses
            ]
    return statuses
