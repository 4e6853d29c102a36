"""The one error tree of fedvault.

Every error fedvault raises on purpose derives from :class:`FedVaultError`; each also
inherits the builtin it refines, so callers that expect ``ValueError`` still work::

    FedVaultError
    ├── ConfigError (ValueError)        a setting, flag or file of settings is wrong
    ├── DataError (ValueError)          input data is unusable (missing, malformed, ...)
    │   └── SchemaError                 data breaks the site's schema contract
    ├── PrivacyError (RuntimeError)     a privacy budget or policy forbids the request
    │   └── BudgetExceededError         training would spend more epsilon than allowed
    ├── IntegrityError (ValueError)     wrong key, tampered bytes, bad signature
    └── FederationError (RuntimeError)  the federation could not run or finish

Only the CLI maps these to exit codes and one-line messages.
"""

from __future__ import annotations


class FedVaultError(Exception):
    """Root of every error fedvault raises on purpose."""


class ConfigError(FedVaultError, ValueError):
    """A setting is missing, unknown or out of range; the message names the key."""


class DataError(FedVaultError, ValueError):
    """Input data cannot be used; the message says what and where."""


class SchemaError(DataError):
    """Data breaks the schema contract."""


class PrivacyError(FedVaultError, RuntimeError):
    """A privacy budget or a site's policy forbids what was asked."""


class BudgetExceededError(PrivacyError):
    """Training would push the privacy loss past the site's budget."""


class IntegrityError(FedVaultError, ValueError):
    """Authentication failed: wrong key or tampered data. Deliberately opaque."""

    def __init__(self, message: str = "integrity check failed") -> None:
        super().__init__(message)


class FederationError(FedVaultError, RuntimeError):
    """The federated run could not start, went wrong, or could not finish."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none):
    how a library's error is quoted inside one of ours, which stays one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
