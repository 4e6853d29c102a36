"""What a site releases besides its model updates, each a Gaussian mechanism with a
cost on the same ledger as its DP-SGD steps.

- **The preprocessing summary** (``stats``): noisy counts and sums of bounded
  contributions (:mod:`fedvault.client._summary_dp`), with noise multiplier
  :func:`summary_sigma`. Made once per dataset version and kept in
  ``STATE/releases/summary-<version>.json`` (HMAC under the site's accountant key):
  asking again, in any run with any seed, returns the same bytes and charges
  nothing; there is nothing to average.
- **Validation counts** (``evaluate``): the number of correct predictions and of
  examples, each with sensitivity 1, noise multiplier :func:`metric_sigma`, charged
  per evaluation (a crafted model buys noisy counts at a price, never exact ones).

A Gaussian release of a vector of L2 sensitivity S with noise std sigma * S has
exactly the RDP of one DP-SGD step at sample rate 1, so each is recorded in the
ledger as ``Step(noise_multiplier=sigma, sample_rate=1.0, steps=1)`` and the
accountant composes it with everything else. Budget split of a run's epsilon
target (docs/privacy.md): the summary's sigma is planned for
:data:`SUMMARY_SHARE` of it alone (:data:`IMAGE_SUMMARY_SHARE` for an image site's,
which holds only its row and label counts), the validation counts' for
:data:`METRICS_SHARE` over all rounds, and the DP-SGD noise for what the
composition leaves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedvault.client._ledger_cache import cache_key
from fedvault.client._summary_dp import Declared, noisy_summary
from fedvault.client.ledger import PrivacyLedger
from fedvault.client.policy import SitePolicy
from fedvault.client.site import SiteSettings
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError, ConfigError, PrivacyError
from fedvault.common.privacy import (
    IMAGE_SUMMARY_SHARE,
    METRICS_SHARE,
    SUMMARY_SHARE,
    Step,
    plan_noise,
)
from fedvault.common.wire import summary_from_bytes, summary_to_bytes

logger = logging.getLogger(__name__)

MAX_RELEASE_SIGMA = 1000.0
RELEASES = "releases"
SUMMARY_RUN = "summary"  # ledger run id prefix of summary releases
EVAL_SUFFIX = ":eval"  # ledger run id suffix of a run's validation counts


def _planned(epsilon: float, steps: int, policy: SitePolicy) -> float:
    try:
        sigma = plan_noise(
            target_epsilon=epsilon,
            delta=policy.delta,
            sample_rate=1.0,
            steps=steps,
            accountant=policy.accountant,
        )
    except PrivacyError:  # a share too small for any noise: the most noise
        sigma = MAX_RELEASE_SIGMA
    return max(sigma, policy.min_noise_multiplier)


def _target(settings: TrainingConfig, policy: SitePolicy) -> float:
    """The epsilon a run can spend at most: its target within the site's budget."""
    return min(settings.epsilon, policy.epsilon_max)


def summary_sigma(
    settings: TrainingConfig, policy: SitePolicy, *, images: bool = False
) -> float:
    """Noise multiplier of the summary: one Gaussian release planned, with the
    same planning code as DP-SGD, for SUMMARY_SHARE of the run's epsilon alone
    (its target, within the site's lifetime budget); IMAGE_SUMMARY_SHARE for an
    image site's (row and label counts only)."""
    share = IMAGE_SUMMARY_SHARE if images else SUMMARY_SHARE
    return _planned(share * _target(settings, policy), 1, policy)


def metric_sigma(settings: TrainingConfig, policy: SitePolicy) -> float:
    """Noise multiplier of the validation counts: one release per round, planned
    for METRICS_SHARE of the run's epsilon over all rounds alone."""
    return _planned(METRICS_SHARE * _target(settings, policy), settings.rounds, policy)


def release_step(sigma: float) -> Step:
    """The ledger's entry for one Gaussian release at noise multiplier ``sigma``."""
    return Step(noise_multiplier=sigma, sample_rate=1.0, steps=1)


def declared(site: SiteSettings) -> Declared:
    """Bounds and categories the site's schema declares (a vault's manifest, or a
    data site's ``schema=PATH``); nothing for a site without one."""
    columns: dict[str, Any] = {}
    if site.vault is not None and site.key_file is not None:
        from fedvault.client.data.keys import load_key
        from fedvault.client.data.vault import read_manifest

        key = load_key(site.key_file, vault_dir=site.vault)
        columns = dict(read_manifest(site.vault, key).schema.get("columns", {}))
    elif site.schema is not None:
        from fedvault.client.data.schema_toml import load_schema

        schema = load_schema(site.schema)
        columns = {c.name: c.to_dict() for c in schema.columns}
    bounds, categories = {}, {}
    for name, spec in columns.items():
        lo, hi = spec.get("min"), spec.get("max")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and hi > lo:
            bounds[str(name)] = (float(lo), float(hi))
        if spec.get("categories"):
            categories[str(name)] = tuple(str(c) for c in spec["categories"])
    return Declared(bounds=bounds, categories=categories)


def _path(state_dir: Path, version: str) -> Path:
    return state_dir / RELEASES / f"summary-{version[:32]}.json"


def _mac(key: bytes, version: str, data: bytes) -> str:
    return hmac.new(key, version.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _kept(state_dir: Path, version: str) -> bytes | None:
    path = _path(state_dir, version)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        data = bytes.fromhex(str(doc["summary"]))
        mac = str(doc["hmac"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable kept release; releasing again", path)
        return None
    if not hmac.compare_digest(mac, _mac(cache_key(state_dir), version, data)):
        logger.warning("%s: kept release does not verify; releasing again", path)
        return None
    return data


def _keep(state_dir: Path, version: str, data: bytes) -> None:
    path = _path(state_dir, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"summary": data.hex(), "hmac": _mac(cache_key(state_dir), version, data)}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def summary_release(
    *,
    frame: pd.DataFrame,
    target: str,
    site: SiteSettings,
    version: str,
    ledger: PrivacyLedger,
    policy: SitePolicy,
    settings: TrainingConfig,
    state_dir: Path,
    seed: int,
    regression: bool = False,
    image_shape: tuple[int, ...] | None = None,
) -> bytes:
    """The site's summary of ``frame`` for dataset ``version``: the kept release
    if there is one (nothing charged), else a new one, charged to the ledger
    before it is kept and sent. ``seed``: of its noise (a deployed site's comes
    from the OS, see :func:`fedvault.client.rounds.round_seed`). A regression
    summary is kept apart from a classification one of the same version.

    Raises :class:`BudgetExceededError` when the budget cannot cover it (nothing
    is released) and :class:`ConfigError` for an unreadable schema.
    """
    if regression:
        version = hashlib.sha256(f"{version}/regression/{target}".encode()).hexdigest()
    kept = _kept(state_dir, version)
    if kept is not None:
        return kept
    sigma = summary_sigma(settings, policy, images=image_shape is not None)
    summary, dropped = noisy_summary(
        frame,
        target,
        declared=declared(site),
        sigma=sigma,
        rng=np.random.default_rng(seed),
        regression=regression,
        image_shape=image_shape,
    )
    if dropped:
        logger.warning(
            "identifier-like columns dropped from the features (mostly distinct "
            "values, not categories): %s",
            dropped,
        )
    data = summary_to_bytes(summary | {"dropped": dropped})
    step = release_step(sigma)
    refusal = ledger.check_round(step, policy)
    if refusal is not None:
        raise BudgetExceededError(f"the preprocessing summary: {refusal.detail}")
    digest = hashlib.sha256(data).hexdigest()
    ledger.append(f"{SUMMARY_RUN}:{version[:32]}", 0, step, 1.0, digest, policy=policy)
    _keep(state_dir, version, data)
    return data


def released_rows(data: bytes) -> int:
    """The (noisy) row count a summary released: what the site may say of its
    size from then on. Raises :class:`ConfigError` for a summary it cannot read."""
    try:
        return int(summary_from_bytes(data)["rows"])
    except ValueError as exc:
        raise ConfigError(f"kept summary release unreadable: {exc}") from exc
