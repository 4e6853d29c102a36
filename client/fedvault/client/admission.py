"""The edge of every ClientApp handler: the run's request checked against the
site's own policy before any data is read (issue 11: the site decides)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvault.client.approval import approve, load_approval
from fedvault.client.budget import policy_path
from fedvault.client.model_policy import check_model, load_model_policy
from fedvault.client.pending import check_hold
from fedvault.client.policy import SitePolicy, check_request, check_rows, load_policy
from fedvault.client.site import (
    SiteSettings,
    SplitData,
    data_columns,
    load_site_data,
    select_columns,
    site_settings,
)
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError
from fedvault.common.protocol import Decline


@dataclass(frozen=True)
class Run:
    """A run the site takes part in: its settings, the site's own, its policy."""

    settings: TrainingConfig
    site: SiteSettings
    policy: SitePolicy
    policy_file: Path
    state_dir: Path


def admit(context: Any) -> tuple[SiteSettings, Run | Decline]:
    """The edge of every handler: the run's request against the site's policy,
    before any data is read (a site without a readable policy takes part in
    nothing)."""
    settings = TrainingConfig.from_run_config(context.run_config)
    site = site_settings(context.node_config, context.run_config)
    try:
        policy_file, state_dir = policy_path(site.state, site.policy)
        policy = load_policy(policy_file)
        models = load_model_policy(policy_file)
    except ConfigError as exc:
        return site, Decline("policy", f"the site's policy cannot be read: {exc}")
    refusal = (
        check_request(policy, settings)
        or check_model(models, settings.model)
        or approve(
            policy_file, settings, context.run_config, lambda: data_columns(site)
        )
    )
    if refusal is None and load_approval(policy_file).hold:
        refusal = check_hold(state_dir, str(context.run_id), context.run_config)
    if refusal is not None:
        return site, refusal
    return site, Run(settings, site, policy, policy_file, state_dir)


def refuse_rows(run: Run, split: SplitData) -> Decline | None:
    """Why the site's own rows rule the run out (delta against their number)."""
    return check_rows(run.policy, rows=len(split.train)) if run.settings.dp else None


def run_data(run: Run, target: str) -> SplitData | Decline:
    """The site's split with only the run's feature columns (and ``target``), or a
    ``data`` decline naming a feature column its data lacks. Every handler reads
    the site's rows through here, in simulation and deployed alike.

    Raises:
        FedVaultError: the data cannot be read (as :func:`load_site_data`).
    """
    selected = select_columns(
        load_site_data(run.site, target=target), run.settings.features, target
    )
    return Decline("data", selected) if isinstance(selected, str) else selected
