"""What studies a site approves: the ``[approval]`` table of its policy file.

::

    [approval]
    coordinator-ca = "SHA256:9F:2C:…"   # the consortium CA the site trusts
    targets = ["outcome"]                # label columns a study may predict
    models = ["mlp", "logreg"]           # models a study may train
    columns = ["age", "bmi"]             # feature columns a study may train on
    schema-hash = "sha256:…"             # the one column set a study may use
    hold = true                          # every run waits for the operator

Every key is optional; a key that is present must be met, else the run is
declined with reason ``policy`` before any data is read (the decline reaches
the coordinator's results as every decline does). The rounds a run may take are
``max-rounds`` of ``[privacy]``. ``coordinator-ca`` is the SHA-256 fingerprint of
the CA certificate the site's SuperNode trusts (``ca-certificate`` of ``[site]`` in
the same file), as ``openssl x509 -noout -fingerprint -sha256`` prints it (colons
and case do not matter): a site whose CA file was swapped takes part in nothing.
``columns``: a run naming another feature column, or a run of every column
(no ``features``) when the site's data holds a column not listed, is declined
naming the column (the data's header or vault manifest is read, no row).
``schema-hash``: :func:`run_schema_hash` of the run's target and feature columns
must be this one (``fedvault client plan STUDY.toml`` prints a study's).
``hold``: a run the site's operator has not approved is held
(:mod:`fedvault.client.pending`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedvault.common.config import TrainingConfig, parse_fields, read_toml
from fedvault.common.errors import ConfigError, FedVaultError
from fedvault.common.protocol import RUN_TARGET, Decline

TABLE = "approval"


@dataclass(frozen=True, kw_only=True)
class Approval:
    """The ``[approval]`` table (empty: the site approves what its privacy policy
    allows)."""

    coordinator_ca: str = ""
    targets: list[str] | None = None
    models: list[str] | None = None
    columns: list[str] | None = None
    schema_hash: str = ""
    hold: bool = False
    ca_file: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.coordinator_ca, str):
            raise ConfigError("coordinator-ca: expected a fingerprint string")
        if not isinstance(self.schema_hash, str):
            raise ConfigError("schema-hash: expected a sha256: string")
        lists = (
            ("targets", self.targets),
            ("models", self.models),
            ("columns", self.columns),
        )
        for key, value in lists:
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
        return replace(approval, ca_file=path.parent / str(ca))
    return approval


def run_schema_hash(target: str, features: Sequence[str]) -> str:
    """``sha256:HEX`` of a run's target and feature columns (sorted; an empty list
    is a run of every column), as canonical JSON: what ``schema-hash`` pins."""
    doc = {"features": sorted(features), "target": target}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _check_columns(
    approval: Approval,
    features: Sequence[str],
    target: str,
    site_columns: Callable[[], Sequence[str]] | None,
) -> Decline | None:
    approved = approval.columns
    if approved is None:
        return None
    allowed = f"the site approves only {', '.join(approved) or 'no column'}"
    for column in features:
        if column not in approved:
            return Decline(
                "policy",
                f"the run trains on column {column!r}; {allowed} ([approval] columns)",
            )
    if features:
        return None
    try:
        present = list(site_columns()) if site_columns is not None else None
    except FedVaultError as exc:
        return Decline("policy", f"the site cannot list its columns: {exc}")
    if present is None:
        return Decline(
            "policy", f"the run trains on every column; {allowed} ([approval] columns)"
        )
    for column in present:
        if column != target and column not in approved:
            return Decline(
                "policy",
                f"the run trains on every column, column {column!r} too; {allowed} "
                "([approval] columns)",
            )
    return None


def check_approval(
    approval: Approval,
    settings: TrainingConfig,
    run_config: Mapping[str, Any],
    site_columns: Callable[[], Sequence[str]] | None = None,
) -> Decline | None:
    """``None`` when the site approves the run, else ``Decline("policy", ...)``;
    ``site_columns`` lists the site's data columns (for a run of every column,
    when ``columns`` is set)."""
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
    refusal = _check_columns(approval, settings.features, target, site_columns)
    if refusal is not None:
        return refusal
    schema = run_schema_hash(target, settings.features)
    if approval.schema_hash and schema != approval.schema_hash.strip().lower():
        return Decline(
            "policy",
            f"the run's columns have schema hash {schema}; the site approves only "
            f"{approval.schema_hash} ([approval] schema-hash)",
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
    policy_file: Path,
    settings: TrainingConfig,
    run_config: Any,
    site_columns: Callable[[], Sequence[str]] | None = None,
) -> Decline | None:
    """The site's approval of a run, read from its policy file; a table that
    cannot be read declines the run."""
    try:
        approval = load_approval(policy_file)
    except ConfigError as exc:
        return Decline("policy", f"the site's [approval] cannot be read: {exc}")
    return check_approval(approval, settings, run_config, site_columns)
