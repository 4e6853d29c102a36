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
from fedvault.common.privacy import NOT_COVERED, RELEASES
from fedvault.common.protocol import (
    SECAGG_CLIPPING_RANGE,
    SECAGG_QUANTIZATION_RANGE,
    final_keys,
)


@dataclass
class SiteRecord:
    """What the coordinator learned about one site during the run (privacy figures
    as the site reported them: its own delta, accountant, sigma and q)."""

    name: str
    examples: int = 0
    declared_rows: int = 0  # training rows the site's summary declared (0: unknown)
    rounds_trained: int = 0
    epsilon_spent: float = 0.0
    epsilon_lifetime: float | None = None
    epsilon_budget: float | None = None
    delta: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    noise_from_run_seed: bool | None = None
    declines: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def policy_note(self, t: TrainingConfig) -> str | None:
        """How the site's own delta/accountant differ from the run's request."""
        if self.delta is None or (self.delta, self.accountant) == (
            t.delta,
            t.accountant,
        ):
            return None
        return (
            f"accounted with its own policy's delta {self.delta:g} and "
            f"{self.accountant} accountant; the run asked for delta {t.delta:g} "
            f"with {t.accountant}"
        )

    def as_dict(self, t: TrainingConfig) -> dict[str, Any]:
        dp = t.dp
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
            "accountant": self.accountant if dp else None,
            "policy_note": self.policy_note(t) if dp else None,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "noise_from_run_seed": self.noise_from_run_seed,
            "declines": self.declines,
            "rejected_updates": self.rejected,
            "failures": self.failures,
        }


def _common(sites: dict[str, dict[str, Any]], key: str) -> Any:
    """The value every site that reported figures shares, else None."""
    values = {s[key] for s in sites.values() if s.get(key) is not None}
    return values.pop() if len(values) == 1 else None


def dp_section(t: TrainingConfig, sites: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The DP part of ``summary.json``: ``delta``/``accountant`` are the sites' own
    (None when they differ, or none trained); the run's request is apart."""
    section = {
        "enabled": True,
        "level": "sample-level, per site (DP-SGD)",
        "delta": _common(sites, "delta"),
        "accountant": _common(sites, "accountant"),
        "requested_delta": t.delta,
        "requested_accountant": t.accountant,
        "epsilon_target": t.epsilon,
        "max_grad_norm": t.max_grad_norm,
        "sampling": "poisson",
    }
    return section if t.dp else {k: None for k in section} | {"enabled": False}


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
        "dp": dp_section(t, sites),
        "client_dp": client_level,
        "secure_aggregation": secure_aggregation_section(t),
        "history": history,
        "final": {k: final.get(k) for k in final_keys(t.task)},
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
        "accountant": _common(sites, "accountant") if t.dp else None,
        "delta": _common(sites, "delta") if t.dp else None,
        "requested_accountant": t.accountant if t.dp else None,
        "requested_delta": t.delta if t.dp else None,
        "run_epsilon_target": t.epsilon if t.dp else None,
        "clipping_norm": t.max_grad_norm if t.dp else None,
        "noise": "planned per site"
        if not t.noise_multiplier
        else f"fixed noise multiplier {t.noise_multiplier:g}",
        "seed": t.seed,
        "site_figures_source": SITE_FIGURES_SOURCE if t.dp else None,
        "releases": list(RELEASES) if t.dp else [],
        "not_covered": NOT_COVERED if t.dp else None,
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
                    "accountant",
                    "policy_note",
                    "examples",
                    "noise_multiplier",
                    "sample_rate",
                    "noise_from_run_seed",
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
    sample = report["mechanism"] != "none"
    if not sample:
        lines = [
            "NO DIFFERENTIAL PRIVACY at the sites. This run trained with --no-dp: "
            "the records behind each site's updates carry no sample-level guarantee."
        ]
    else:
        lines = [
            f"Mechanism: {report['mechanism']}; clipping norm C = "
            f"{report['clipping_norm']:g}; noise: {report['noise']}. Each site "
            "accounts with its own policy's accountant and delta (below), whatever "
            f"the run asked for (delta {report['requested_delta']:g}, "
            f"{report['requested_accountant']})."
        ]
    lines.append(
        f"Secure aggregation: {'on (SecAgg+)' if secure else 'off'}. "
        f"Client-level DP: {_client_line(client)}."
    )
    if sample:
        lines += ["", *_site_lines(report["sites"])]
        lines += ["", *_released_lines(report)]
    lines += ["", *_meaning(sample, client, secure)]
    return "\n".join(lines) + "\n"


def _released_lines(report: dict[str, Any]) -> list[str]:
    """What leaves every site besides its noised updates, and whose noise it is."""
    lines = ["Released by each site, all composed into its epsilon above:"]
    lines += [
        f"  - {r['release']}: {r['mechanism']}; {r['share']}."
        for r in report["releases"]
    ]
    lines.append(f"Not covered by epsilon: {report['not_covered']}.")
    sites = report["sites"].values()
    if any(s["noise_from_run_seed"] for s in sites):
        lines.append(
            "Noise: this was a simulation. Each site's noise derives from the run's "
            f"seed ({report['seed']}, stored in summary.json), so whoever holds the "
            "seed can reproduce it and subtract it from an update; the guarantee "
            "holds only against those who do not. A deployed site draws its noise "
            "seed from its operating system's entropy and never sends it."
        )
    elif any(s["noise_from_run_seed"] is False for s in sites):
        lines.append(
            "Noise: each site drew its noise seed from its operating system's "
            "entropy every round and never sent it."
        )
    return lines


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
        "at the site's own delta with its own accountant), "
        f"{SITE_FIGURES_SOURCE}:"
    ]
    for name, s in sites.items():
        lifetime = (
            "-" if s["epsilon_lifetime"] is None else _down(s["epsilon_lifetime"])
        )
        budget = "-" if s["epsilon_budget"] is None else f"{s['epsilon_budget']:g}"
        delta = "-" if s["delta"] is None else f"{s['delta']:g}"
        accountant = s["accountant"] or "-"
        lines.append(
            f"  {name}: {_down(s['epsilon_spent'])} / {lifetime} / {budget} "
            f"(delta {delta}, {accountant} accountant; {s['rounds_trained']} rounds; "
            f"{len(s['declines'])} declined)"
        )
        if s["policy_note"]:
            lines.append(f"    {name} {s['policy_note']}.")
    return lines


def _meaning(sample: bool, client: dict[str, Any] | None, secure: bool) -> list[str]:
    sees = (
        "the coordinator sees only the sum of the sites' updates (SecAgg+)."
        if secure
        else "the coordinator sees each site's (noised) update."
    )
    out = []
    if sample:
        out.append(
            "What this means: for every record held by a site, everything listed "
            "above that the site released in this run changes the probability of "
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
