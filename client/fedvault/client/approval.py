"""What studies a site approves: the ``[approval]`` table of its policy file.

::

    [approval]
    coordinator-ca = "SHA256:9F:2C:…"   # the consortium CA the site trusts
    targets = ["outcome"]                # label columns a study may predict
    models = ["mlp", "logreg"]           # models a study may train

Every key is optional; a key that is present must be met, else the run is
declined with reason ``policy`` before any data is read (the decline reaches
the coordinator's results as every decline does). The rounds a run may take are
``max-rounds`` of ``[privacy]``. ``coordinator-ca`` is the SHA-256 fingerprint of
the CA certificate the site's SuperNode trusts (``ca-certificate`` of ``[site]`` in
the same file), as ``openssl x509 -noout -fingerprint -sha256`` prints it (colons
and case do not matter): a site whose CA file was swapped takes part in nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedvault.common.config import TrainingConfig, parse_fields, read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.protocol import RUN_TARGET, Decline

TABLE = "approval"


@dataclass(frozen=True, kw_only=True)
class Approval:
    """The ``[approval]`` table (empty: the site approves what its privacy policy
    allows)."""

    coordinator_ca: str = ""
    targets: list[str] | None = None
    models: list[str] | None = None
    ca_file: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.coordinator_ca, str):
            raise ConfigError("coordinator-ca: expected a fingerprint string")
        for key, value in (("targets", self.targets), ("models", self.models)):
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(f"{key}: expected a list of strings, got {value!r}")


def _normalize(fingerprint: str) -> str:
    text = fingerprint.strip().lower().removeprefix("sha256:")
    text = re.sub(r"^sha256 fingerprint=", "", text)
    return text.replace(":", "")


def ca_fingerprint(path: Path) -> str:
    """``SHA256:HEX`` of a PEM certificate's DER bytes.

    Raises:
        ConfigError: the file is missing or not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"coordinator-ca: cannot read {path} ({exc})") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return "SHA256:" + hashlib.sha256(der).hexdigest().upper()


def load_approval(path: Path) -> Approval:
    """The ``[approval]`` table of the policy file ``path`` (with the CA file that
    ``[site] ca-certificate`` of the same file names, when it does).

    Raises:
        ConfigError: the table or one of its keys is wrong (named).
    """
    raw = read_toml(path)
    table = raw.get(TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table")
    approval = parse_fields(Approval, table, source=f"{path} [{TABLE}]")
    site = raw.get("site", {})
    ca = site.get("ca-certificate") if isinstance(site, dict) else None
    if ca:
        return Approval(
            coordinator_ca=approval.coordinator_ca,
            targets=approval.targets,
            models=approval.models,
            ca_file=path.parent / str(ca),
        )
    return approval


def check_approval(
    approval: Approval, settings: TrainingConfig, run_config: Mapping[str, Any]
) -> Decline | None:
    """``None`` when the site approves the run, else ``Decline("policy", ...)``."""
    target = str(run_config.get(RUN_TARGET, ""))
    if approval.targets is not None and target not in approval.targets:
        return Decline(
            "policy",
            f"the run predicts {target!r}; the site approves only "
            f"{', '.join(approval.targets) or 'no target'} ([approval] targets)",
        )
    if approval.models is not None and settings.model not in approval.models:
        return Decline(
            "policy",
            f"the run trains model {settings.model!r}; the site approves only "
            f"{', '.join(approval.models) or 'no model'} ([approval] models)",
        )
    if approval.coordinator_ca:
        if approval.ca_file is None:
            return Decline(
                "policy",
                "[approval] coordinator-ca is set but [site] ca-certificate is not "
                "in the same file; the site cannot check its CA",
            )
        try:
            actual = ca_fingerprint(approval.ca_file)
        except ConfigError as exc:
            return Decline("policy", str(exc))
        if _normalize(actual) != _normalize(approval.coordinator_ca):
            return Decline(
                "policy",
                f"the site's CA file {approval.ca_file} is not the coordinator CA "
                "its policy approves ([approval] coordinator-ca)",
            )
    return None


def approve(
    policy_file: Path, settings: TrainingConfig, run_config: Any
) -> Decline | None:
    """The site's approval of a run, read from its policy file; a table that
    cannot be read declines the run."""
    try:
        approval = load_approval(policy_file)
    except ConfigError as exc:
        return Decline("policy", f"the site's [approval] cannot be read: {exc}")
    return check_approval(approval, settings, run_config)
