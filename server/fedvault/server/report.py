"""What a run reports: per-site records, ``summary.json``, ``privacy.json`` and a
plain-language ``privacy.txt``. Every epsilon here was computed by a site's
accountant and sent with its update; nothing is recomputed or typed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedvault.common.config import TrainingConfig


@dataclass
class SiteRecord:
    """What the coordinator learned about one site during the run."""

    name: str
    examples: int = 0
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


def privacy_report(
    t: TrainingConfig, sites: dict[str, dict[str, Any]]
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
        "client_level_dp": None,
        "secure_aggregation": False,
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
    if report["mechanism"] == "none":
        return (
            "NO DIFFERENTIAL PRIVACY. This run trained with --no-dp: the model "
            "updates sent by every site carry no formal privacy guarantee.\n"
        )
    lines = [
        f"Mechanism: {report['mechanism']}; accountant: {report['accountant']}; "
        f"clipping norm C = {report['clipping_norm']:g}; noise: {report['noise']}.",
        f"Secure aggregation: {'on' if report['secure_aggregation'] else 'off'}. "
        f"Client-level DP: {report['client_level_dp'] or 'off'}.",
        "",
        "Per site (epsilon in this run / lifetime on this dataset / lifetime budget, "
        "at the site's delta):",
    ]
    for name, s in report["sites"].items():
        lifetime = (
            "-" if s["epsilon_lifetime"] is None else f"{s['epsilon_lifetime']:.3f}"
        )
        budget = "-" if s["epsilon_budget"] is None else f"{s['epsilon_budget']:g}"
        delta = "-" if s["delta"] is None else f"{s['delta']:g}"
        lines.append(
            f"  {name}: {s['epsilon_spent']:.3f} / {lifetime} / {budget} "
            f"(delta {delta}; {s['rounds_trained']} rounds; "
            f"{len(s['declines'])} declined)"
        )
    lines += [
        "",
        "What this means: for every record held by a site, whatever that site "
        "released in this run (all its model updates) changes the probability of any "
        "outcome by at most a factor e^epsilon, except with probability delta, "
        "whether or not that record was in the site's data. It protects individual "
        "records, not the participation of a whole site; the coordinator still sees "
        "each site's update and its summary counts for preprocessing (not noised).",
    ]
    return "\n".join(lines) + "\n"
