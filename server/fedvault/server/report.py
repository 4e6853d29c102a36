"""What a run reports: per-site records, ``summary.json``, ``privacy.json`` and a
plain-language ``privacy.txt``. Every sample-level epsilon here was computed by a
site's accountant and sent with its update; the client-level epsilon comes from
Flower's accountant in the coordinator's DP wrapper. Nothing is typed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedvault.common.config import TrainingConfig
from fedvault.common.preprocessing import Preprocessing
from fedvault.common.protocol import SECAGG_CLIPPING_RANGE, SECAGG_QUANTIZATION_RANGE


@dataclass
class SiteRecord:
    """What the coordinator learned about one site during the run."""

    name: str
    examples: int = 0
    declared_rows: int = 0  # training rows the site's summary declared (0: unknown)
    rounds_trained: int = 0
    epsilon_spent: float = 0.0
    epsilon_lifetime: float | None = None
    epsilon_budget: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    declines: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, dp: bool) -> dict[str, Any]:
        remaining = None
        if dp and self.epsilon_budget is not None and self.epsilon_lifetime is not None:
            remaining = max(self.epsilon_budget - self.epsilon_lifetime, 0.0)
        return {
            "examples": self.examples,
            "rounds_trained": self.rounds_trained,
            "epsilon_spent": self.epsilon_spent if dp else None,
            "epsilon_lifetime": self.epsilon_lifetime if dp else None,
            "epsilon_budget": self.epsilon_budget if dp else None,
            "epsilon_remaining": remaining,
            "delta": self.delta if dp else None,
            "noise_multiplier": self.noise_multiplier,
            "declines": self.declines,
            "rejected_updates": self.rejected,
            "failures": self.failures,
        }


def dp_section(t: TrainingConfig) -> dict[str, Any]:
    if not t.dp:
        return {
            "enabled": False,
            "level": None,
            "delta": None,
            "accountant": None,
            "epsilon_target": None,
            "max_grad_norm": None,
            "sampling": None,
        }
    return {
        "enabled": True,
        "level": "sample-level, per site (DP-SGD)",
        "delta": t.delta,
        "accountant": t.accountant,
        "epsilon_target": t.epsilon,
        "max_grad_norm": t.max_grad_norm,
        "sampling": "poisson",
    }


@dataclass(frozen=True)
class ClientDpFigures:
    """Client-level DP figures of a run, read from the strategy's DP wrapper."""

    epsilon: float | None
    releases: int
    sampled: int
    population: int
    update_noise_multiplier: float | None
    clipping_norm: float | None


def client_dp_section(
    t: TrainingConfig, *, figures: ClientDpFigures | None
) -> dict[str, Any] | None:
    """The client-level DP part of the reports (None when the run has none)."""
    if t.client_dp == "off":
        return None
    fixed = t.client_dp in ("server-fixed", "client-fixed")
    return {
        "mode": t.client_dp,
        "guarantee": "client-level (epsilon, delta)-DP of the released models, "
        "add/remove one site's whole contribution",
        "clipping": "of each site's update, "
        + ("at the site (Flower client mod)" if t.client_side_clipping else "")
        + ("" if t.client_side_clipping else "by the coordinator"),
        "clipping_norm": t.client_clipping_norm,
        "clipping_norm_final": None if figures is None else figures.clipping_norm,
        "noise": "Gaussian, added by the coordinator to the average of updates",
        "noise_multiplier": t.client_noise_multiplier,
        "update_noise_multiplier": None
        if figures is None
        else figures.update_noise_multiplier,
        "delta": t.client_delta,
        "epsilon": None if figures is None else figures.epsilon,
        "accountant": "rdp (Flower), no sampling amplification" if fixed else None,
        "releases": 0 if figures is None else figures.releases,
        "sites_per_release": None if figures is None else figures.sampled,
        "population": None if figures is None else figures.population,
        "weighting": "equal (client-weight = 1)",
        "note": None
        if fixed
        else "adaptive clipping: Flower 1.39 has no accountant for it, so no "
        "client-level epsilon is claimed",
    }


def secure_aggregation_section(t: TrainingConfig) -> dict[str, Any] | None:
    """How the run's SecAgg+ was set up (None when off)."""
    if not t.secagg:
        return None
    return {
        "protocol": "SecAgg+ (Flower SecAggPlusWorkflow + secaggplus_mod)",
        "coordinator_learns": "the weighted average of the updates of the sites "
        "that completed masking; per-site metrics stay in the clear",
        "reconstruction_threshold": "majority of the sampled sites, at least 2",
        "clipping_range": SECAGG_CLIPPING_RANGE,
        "quantization_levels": SECAGG_QUANTIZATION_RANGE,
        "weights": "1 (client-level DP)"
        if t.client_dp != "off"
        else "num-examples (max weight: the largest site's count)",
    }


def run_summary(
    t: TrainingConfig,
    *,
    history: list[dict[str, Any]],
    sites: dict[str, dict[str, Any]],
    excluded: dict[str, str],
    prep: Preprocessing,
    stop_reason: str,
    client_level: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run's ``summary.json``."""
    final = history[-1] if history else {}
    return {
        "rounds_completed": len(history),
        "rounds_planned": t.rounds,
        "status": "stopped" if stop_reason else "completed",
        "stop_reason": stop_reason or None,
        "strategy": t.strategy,
        "model": t.model,
        "dp": dp_section(t),
        "client_dp": client_level,
        "secure_aggregation": secure_aggregation_section(t),
        "history": history,
        "final": {k: final.get(k) for k in ("accuracy", "auc", "loss", "val_accuracy")},
        "sites": sites,
        "excluded_sites": excluded,
        "num_features": prep.num_features,
        "labels": list(prep.labels),
        "config": t.to_run_config(),
    }


# Per-site figures come from each site's own accountant, over its own ledger; the
# coordinator cannot check them, and a site running modified code can report what
# it likes. The reports say so next to the figures.
SITE_FIGURES_SOURCE = (
    "as reported by each site; the site's own privacy ledger is the authority "
    "(`fedvault client ledger show`)"
)


def privacy_report(
    t: TrainingConfig,
    sites: dict[str, dict[str, Any]],
    *,
    client_level: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The machine-readable privacy report of a run (``privacy.json``)."""
    return {
        "mechanism": "DP-SGD (Opacus): Poisson sampling, per-sample clipping, "
        "Gaussian noise"
        if t.dp
        else "none",
        "guarantee": "sample-level (epsilon, delta)-DP per site, add/remove one record"
        if t.dp
        else "none: --no-dp",
        "accountant": t.accountant if t.dp else None,
        "run_delta": t.delta if t.dp else None,
        "run_epsilon_target": t.epsilon if t.dp else None,
        "clipping_norm": t.max_grad_norm if t.dp else None,
        "noise": "planned per site"
        if not t.noise_multiplier
        else f"fixed noise multiplier {t.noise_multiplier:g}",
        "site_figures_source": SITE_FIGURES_SOURCE if t.dp else None,
        "client_level_dp": client_level,
        "secure_aggregation": t.secagg,
        "secure_aggregation_protocol": secure_aggregation_section(t),
        "sites": {
            name: {
                k: s[k]
                for k in (
                    "epsilon_spent",
                    "epsilon_lifetime",
                    "epsilon_budget",
                    "epsilon_remaining",
                    "delta",
                    "noise_multiplier",
                    "rounds_trained",
                    "declines",
                )
            }
            for name, s in sites.items()
        },
    }


def privacy_text(report: dict[str, Any]) -> str:
    """A short human-readable privacy statement for the run (``privacy.txt``)."""
    client = report["client_level_dp"]
    secure = report["secure_aggregation"]
    if report["mechanism"] == "none":
        lines = [
            "NO DIFFERENTIAL PRIVACY at the sites. This run trained with --no-dp: "
            "the records behind each site's updates carry no sample-level guarantee."
        ]
    else:
        lines = [
            f"Mechanism: {report['mechanism']}; accountant: {report['accountant']}; "
            f"clipping norm C = {report['clipping_norm']:g}; noise: {report['noise']}."
        ]
    lines.append(
        f"Secure aggregation: {'on (SecAgg+)' if secure else 'off'}. "
        f"Client-level DP: {_client_line(client)}."
    )
    if report["mechanism"] != "none":
        lines += ["", *_site_lines(report["sites"])]
    lines += ["", *_meaning(report["mechanism"] != "none", client, secure)]
    return "\n".join(lines) + "\n"


def _down(value: float) -> str:
    """Epsilon rounded down to 3 decimals, so a figure within a budget never prints
    as reaching it (2.99989 -> 2.999)."""
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _client_line(client: dict[str, Any] | None) -> str:
    if client is None:
        return "off"
    eps = client["epsilon"]
    spent = (
        f"epsilon {_down(eps)} at delta {client['delta']:g} after "
        f"{client['releases']} release(s), Flower RDP accountant"
        if eps is not None
        else "no epsilon claimed (adaptive clipping is not accounted)"
    )
    return (
        f"{client['mode']} (z = {client['noise_multiplier']:g}, "
        f"C = {client['clipping_norm']:g}; {spent})"
    )


def _site_lines(sites: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "Per site (epsilon in this run / lifetime on this dataset / lifetime budget, "
        f"at the site's delta), {SITE_FIGURES_SOURCE}:"
    ]
    for name, s in sites.items():
        lifetime = (
            "-" if s["epsilon_lifetime"] is None else _down(s["epsilon_lifetime"])
        )
        budget = "-" if s["epsilon_budget"] is None else f"{s['epsilon_budget']:g}"
        delta = "-" if s["delta"] is None else f"{s['delta']:g}"
        lines.append(
            f"  {name}: {_down(s['epsilon_spent'])} / {lifetime} / {budget} "
            f"(delta {delta}; {s['rounds_trained']} rounds; "
            f"{len(s['declines'])} declined)"
        )
    return lines


def _meaning(sample: bool, client: dict[str, Any] | None, secure: bool) -> list[str]:
    sees = (
        "the coordinator sees only the sum of the sites' updates (SecAgg+), but "
        "still each site's metrics and summary counts for preprocessing (not noised)."
        if secure
        else "the coordinator still sees each site's update, its metrics and its "
        "summary counts for preprocessing (not noised)."
    )
    out = []
    if sample:
        out.append(
            "What this means: for every record held by a site, whatever that site "
            "released in this run (all its model updates) changes the probability of "
            "any outcome by at most a factor e^epsilon, except with probability "
            "delta, whether or not that record was in the site's data. It protects "
            f"individual records, not the participation of a whole site; {sees}"
        )
    if client is not None:
        clipper = (
            "each site clips its update (Flower's client mod)"
            if "at the site" in client["clipping"]
            else "the coordinator clips each site's update"
        )
        out.append(
            "Client-level DP: the released global models are also DP with respect "
            "to adding or removing one whole site (all its records at once), "
            f"assuming {clipper}, the coordinator adds the noise as configured (it "
            "is trusted to), every sampled site counts in every round (no sampling "
            "amplification) and all sites weigh the same."
        )
    if secure:
        out.append(
            "Secure aggregation: an honest-but-curious coordinator learns only the "
            "sum of the updates of the sites that completed masking (values clipped "
            "to +-8 and quantized); it does not protect against a coordinator that "
            "deviates from the protocol, nor the released model."
        )
    if not sample and client is None:
        out.append("No formal privacy guarantee applies to this run's models.")
    return out
