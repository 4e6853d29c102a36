"""Users of the coordinator's control plane: client certificates from the
consortium CA that name a user and the user's role.

``fedvault certs user NAME --role admin|researcher|auditor`` writes ``NAME.crt`` and
``NAME.key`` (0600): an EC P-384 key and a certificate with the user's name as its
common name, the role as its organizational unit and the ``clientAuth`` key usage,
signed by the consortium CA. Nobody types a password; the key never leaves the user.
The coordinator enrolls a user by this certificate (its serial number is recorded)
and can revoke it at any time (:mod:`fedvault.server.users`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvault.common.certs import (
    _CLOCK_SKEW,
    CA_CERT,
    _load_ca,
    _now,
    _pem_key,
    _refuse_existing,
    _write_new,
)
from fedvault.common.errors import ConfigError, IntegrityError

Role = Literal["admin", "researcher", "auditor"]
ROLES: tuple[Role, ...] = get_args(Role)
USER_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class UserIdentity:
    """Who a user certificate names: its user, role and serial number (hex)."""

    name: str
    role: Role
    serial: str
    not_after: dt.datetime


def check_user_name(name: str) -> str:
    """Raise :class:`ConfigError` unless ``name`` is a plain user name."""
    if not _NAME.match(name):
        raise ConfigError(
            f"user: {name!r} is not a user name (letters, digits, . _ -; 64 at most)"
        )
    return name


def check_role(role: str) -> Role:
    """Raise :class:`ConfigError` unless ``role`` is one of :data:`ROLES`."""
    for known in ROLES:
        if role == known:
            return known
    raise ConfigError(f"role: unknown {role!r}; use one of {', '.join(ROLES)}")


def issue_user_cert(
    ca_dir: Path, out_dir: Path, *, name: str, role: str, days: int = USER_DAYS
) -> Path:
    """Issue ``out_dir/NAME.crt`` (+ ``NAME.key``, 0600) for a user of ``role``.

    Raises:
        ConfigError: a bad name or role, no CA in ``ca_dir``, or the files exist.
    """
    check_user_name(name)
    check_role(role)
    cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    _refuse_existing(cert_path, key_path)
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    now = _now()
    days = min(days, max(1, (ca_cert.not_valid_after_utc - now).days))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(key_path, _pem_key(key), private=True)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path


def read_user_cert(
    pem: bytes, ca_pem: bytes, *, now: dt.datetime | None = None
) -> UserIdentity:
    """The user a PEM certificate names, checked against the CA ``ca_pem`` (one
    certificate, or the old and new CA of a rotation's overlap window: either).

    Raises:
        IntegrityError: not a certificate, not issued by this CA, expired, or not a
            user certificate (no user name or role).
    """
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(pem)
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise IntegrityError("not a user certificate of this consortium CA") from None
    if not any(_issued_by(cert, ca) for ca in authorities):
        raise IntegrityError("not a user certificate of this consortium CA")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IntegrityError("user certificate expired or not yet valid")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        name = check_user_name(str(names[0].value))
        role = check_role(str(units[0].value))
    except (IndexError, ConfigError):
        raise IntegrityError("certificate names no user and role") from None
    return UserIdentity(
        name, role, format(cert.serial_number, "x"), cert.not_valid_after_utc
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ca_file(ca_dir: Path) -> Path:
    """The consortium CA certificate in ``ca_dir``."""
    return ca_dir / CA_CERT
