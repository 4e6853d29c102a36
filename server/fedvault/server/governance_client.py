"""A user's connection to the coordinator service: mutual TLS with the user's
certificate, each refusal turned into one :class:`FedVaultError` line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from fedvault.common.errors import ConfigError, FederationError
from fedvault.proto import coordinator_pb2 as pb
from fedvault.proto import coordinator_pb2_grpc as pb_grpc
from fedvault.server.rbac import AccessDeniedError

T = TypeVar("T")
TIMEOUT = 120.0  # seconds a unary call may take (a study submission included)


class RefusedError(AccessDeniedError):
    """The service refused the call: unknown or revoked user, or not allowed."""


@dataclass(frozen=True)
class UserCredentials:
    """The files a user calls the service with."""

    cert: Path
    key: Path
    ca: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Raises :class:`ConfigError` naming a missing file."""
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes(),
                certificate_chain=self.cert.read_bytes(),
            )
        except FileNotFoundError as exc:
            raise ConfigError(f"{exc.filename}: not found") from None


def call(rpc: Callable[[], T]) -> T:
    """Run one call; map its gRPC status to one error line.

    Raises:
        RefusedError: UNAUTHENTICATED or PERMISSION_DENIED.
        ConfigError: INVALID_ARGUMENT (the request was wrong; nothing changed).
        FederationError: anything else (the service is down, Flower failed).
    """
    try:
        return rpc()
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise RefusedError(f"refused: {detail}") from None
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            raise ConfigError(str(detail)) from None
        name = code.name if code is not None else "error"
        if "CERTIFICATE_VERIFY_FAILED" in str(detail):
            detail = (
                "the coordinator's certificate is not issued by a CA in the --ca "
                "file (FEDVAULT_CA), or does not name the address dialled; after a "
                "CA rotation, install the consortium's current ca.crt"
            )
        raise FederationError(f"coordinator service: {name}: {detail}") from None


@contextlib.contextmanager
def connect(address: str, user: UserCredentials) -> Iterator[pb_grpc.CoordinatorStub]:
    """A stub of the service at ``address`` for the user's certificate."""
    with grpc.secure_channel(address, user.channel_credentials()) as channel:
        yield pb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]


__all__ = ["TIMEOUT", "RefusedError", "UserCredentials", "call", "connect", "pb"]
