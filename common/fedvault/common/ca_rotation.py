"""Rotating the consortium CA, and with it the coordinator's certificate, with an
overlap window in which sites and users trust both the old and the new CA.

Three steps, each refused (one line) unless the folder is in the state before it:

1. :func:`begin`: a new CA in ``DIR/next/``; ``DIR/ca.crt`` becomes a bundle of the
   old CA then the new one. The coordinator still signs with the old CA and shows
   its old certificate. Every site and user installs the bundle as its CA file:
   from then on they accept a coordinator certificate of either CA.
2. :func:`switch`: the coordinator's certificate is re-issued by the new CA (same
   host name and addresses, a new key), the new CA becomes the signing one
   (``ca.key``), ``ca.crt`` becomes new-then-old, and the old CA and certificate are
   kept in ``DIR/previous/``. The coordinator is restarted to show the new
   certificate; user certificates of the old CA are still accepted (the bundle).
3. :func:`finish`: the old CA is dropped: ``ca.crt`` holds the new CA alone, the old
   CA's key and certificate pair are deleted (its certificate is kept as
   ``DIR/retired/ca-SERIAL.crt`` for the record). Sites and users install the new
   ``ca.crt``; anything that still trusts only the old CA fails the handshake.

The window is the time between steps 1 and 3: long enough for every site and user
to install the bundle (and for users to get certificates of the new CA).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedvault.common.certs import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    create_ca,
    issue_server_cert,
    verify_server_cert,
)
from fedvault.common.errors import ConfigError, IntegrityError

NEXT, PREVIOUS, RETIRED = "next", "previous", "retired"
Stage = Literal["none", "begun", "switched"]


def stage(directory: Path) -> Stage:
    """Where a rotation of the CA in ``directory`` stands."""
    if (directory / PREVIOUS / CA_CERT).exists():
        return "switched"
    if (directory / NEXT / CA_KEY).exists():
        return "begun"
    return "none"


def _refuse_unless(directory: Path, wanted: Stage, step: str) -> None:
    found = stage(directory)
    if found == wanted:
        return
    hint = {
        "none": "no rotation is under way; `certs rotate-ca begin` starts one",
        "begun": "a rotation has begun; `certs rotate-ca switch` is next",
        "switched": "the coordinator was switched; `certs rotate-ca finish` is next",
    }[found]
    raise ConfigError(f"rotate-ca {step}: {directory}: {hint}")


def _pem(path: Path) -> bytes:
    """The first certificate of ``path``, as PEM."""
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run `certs init` first") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None
    return cert.public_bytes(serialization.Encoding.PEM)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a CA file every site copies)."""
    tmp = path.with_name(f".{path.name}.rotate")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def begin(directory: Path, *, name: str = "") -> Path:
    """Step 1: a new CA in ``DIR/next/`` and ``DIR/ca.crt`` as old + new.

    Returns the bundle's path (to give to every site and user).

    Raises:
        ConfigError: no CA in ``directory``, or a rotation already under way.
    """
    _refuse_unless(directory, "none", "begin")
    if not (directory / CA_KEY).exists():
        raise ConfigError(f"{directory / CA_KEY}: not found; run `certs init` first")
    old = _pem(directory / CA_CERT)
    subject = x509.load_pem_x509_certificate(old).subject.rfc4514_string()
    label = name or f"{subject.removeprefix('CN=')} (next)"
    new = _pem(create_ca(directory / NEXT, name=label))
    _replace(directory / CA_CERT, old + new)
    return directory / CA_CERT


def _names(cert_path: Path) -> tuple[str, tuple[str, ...]]:
    """The host (common name) and the extra IP addresses of a server certificate."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    host = str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        ips = [str(ip) for ip in alt.value.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        ips = []
    return host, tuple(ip for ip in ips if ip != "127.0.0.1")


def switch(directory: Path) -> Path:
    """Step 2: the coordinator's certificate from the new CA; the new CA signs
    from now on. Returns the new ``server.crt``.

    Raises:
        ConfigError: not after :func:`begin`, or no coordinator certificate.
    """
    _refuse_unless(directory, "begun", "switch")
    nxt, previous = directory / NEXT, directory / PREVIOUS
    if not (directory / SERVER_CERT).exists():
        raise ConfigError(f"{directory / SERVER_CERT}: not found; nothing to switch")
    host, ips = _names(directory / SERVER_CERT)
    for leftover in (nxt / SERVER_CERT, nxt / SERVER_KEY):  # an interrupted switch
        leftover.unlink(missing_ok=True)
    issue_server_cert(nxt, host=host, ips=ips)
    old, new = _pem(directory / CA_CERT), _pem(nxt / CA_CERT)
    staged = directory / f".{PREVIOUS}.rotate"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(mode=0o700)
    (staged / CA_CERT).write_bytes(old)
    for name in (CA_KEY, SERVER_CERT, SERVER_KEY):
        shutil.copy2(directory / name, staged / name)
    os.replace(staged, previous)  # from here on the stage is "switched"
    for name in (CA_KEY, SERVER_CERT, SERVER_KEY):
        os.replace(nxt / name, directory / name)
    _replace(directory / CA_CERT, new + old)
    shutil.rmtree(nxt)
    verify_server_cert(directory)
    return directory / SERVER_CERT


def finish(directory: Path) -> Path:
    """Step 3: drop the old CA; ``ca.crt`` holds the new one alone. Returns it.

    Raises:
        ConfigError: not after :func:`switch`.
        IntegrityError: the coordinator's certificate is not the new CA's.
    """
    _refuse_unless(directory, "switched", "finish")
    new = _pem(directory / CA_CERT)
    try:
        verify_server_cert(directory)
    except IntegrityError:
        raise IntegrityError(
            f"{directory / SERVER_CERT}: not issued by the new CA; not finishing"
        ) from None
    previous = directory / PREVIOUS
    old = _pem(previous / CA_CERT)
    serial = format(x509.load_pem_x509_certificate(old).serial_number, "x")[:16]
    (directory / RETIRED).mkdir(exist_ok=True)
    _replace(directory / RETIRED / f"ca-{serial}.crt", old)
    _replace(directory / CA_CERT, new)
    shutil.rmtree(previous)
    return directory / CA_CERT
