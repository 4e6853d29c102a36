"""What a site answers to ``stats`` and ``evaluate``: releases, charged to its budget.

The handlers in :mod:`fedvault.client.app` call these after the site's policy
admitted the run; the mechanisms and their costs are :mod:`fedvault.client.releases`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fedvault.client.budget import SiteBudget
from fedvault.client.policy import SitePolicy
from fedvault.client.releases import metric_sigma, released_rows, summary_release
from fedvault.client.rounds import round_seed
from fedvault.client.site import SiteSettings, dataset_version
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError, ConfigError
from fedvault.common.evaluation import Metrics
from fedvault.common.protocol import Decline, EvaluateMetrics

VALIDATION_SENSITIVITY = math.sqrt(2.0)  # L2 change of (correct, examples) per row


def summary(
    *,
    frame: pd.DataFrame,
    target: str,
    site: SiteSettings,
    budget: SiteBudget,
    policy: SitePolicy,
    settings: TrainingConfig,
    state_dir: Path,
    regression: bool = False,
    image_shape: tuple[int, ...] | None = None,
) -> bytes | Decline:
    """The site's summary release (kept, or made and charged), or a decline."""
    try:
        return summary_release(
            frame=frame,
            target=target,
            site=site,
            version=dataset_version(site),
            ledger=budget.ledger,
            policy=policy,
            settings=settings,
            state_dir=state_dir,
            seed=round_seed(site, settings.seed, 0, "summary"),
            regression=regression,
            image_shape=image_shape,
        )
    except BudgetExceededError as exc:
        return Decline("budget", str(exc))
    except ConfigError as exc:  # e.g. its schema contract cannot be read
        return Decline("data", f"the site's schema: {exc}")


def train_examples(
    *,
    frame: pd.DataFrame,
    target: str,
    site: SiteSettings,
    budget: SiteBudget,
    policy: SitePolicy,
    settings: TrainingConfig,
    state_dir: Path,
    regression: bool = False,
    image_shape: tuple[int, ...] | None = None,
) -> int | Decline:
    """What a training reply says of the site's size: the row count its summary
    released (made now if the site has none yet), never the exact one."""
    data = summary(
        frame=frame,
        target=target,
        site=site,
        budget=budget,
        policy=policy,
        settings=settings,
        state_dir=state_dir,
        regression=regression,
        image_shape=image_shape,
    )
    return data if isinstance(data, Decline) else max(1, released_rows(data))


def validation_metrics(
    result: Metrics,
    *,
    budget: SiteBudget,
    server_round: int,
    client_weight: bool,
    seed: int,
) -> EvaluateMetrics | Decline:
    """Noisy counts of correct predictions and of examples, charged to the ledger
    before they leave; accuracy is their ratio. No loss. Adding or removing one
    row changes the pair by (0 or 1, 1): L2 sensitivity sqrt(2), which scales the
    noise of the ledger's noise multiplier."""
    if not math.isfinite(result.accuracy):
        return Decline("data", "no releasable validation count for this task")
    sigma = metric_sigma(budget.settings, budget.policy)
    rng = np.random.default_rng(seed)
    std = sigma * VALIDATION_SENSITIVITY
    correct = round(result.accuracy * result.examples) + rng.normal(0.0, std)
    examples = result.examples + rng.normal(0.0, std)
    digest = hashlib.sha256(f"{correct!r}/{examples!r}".encode()).hexdigest()
    refusal = budget.release(server_round, sigma, digest)
    if refusal is not None:
        return refusal
    shown = max(1, round(examples))
    return EvaluateMetrics(
        num_examples=shown,
        accuracy=min(max(correct / shown, 0.0), 1.0),
        client_weight=client_weight,
    )
