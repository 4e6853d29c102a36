"""Build the Message-API strategy (flwr.serverapp.strategy) a run asks for.

With client-level DP the strategy is wrapped in one of Flower's DP wrappers. The
fixed-clipping wrappers get Flower's RDP accountant, under the only model it
supports: no sampling amplification (every round is charged in full, whether or not
sites were sampled), add/remove one site, equal weights (every reply carries the
constant ``client-weight`` 1) and exactly ``sampled`` replies per release (the
wrapper refuses to aggregate fewer; fedvault then stops the run, see
:mod:`fedvault.server.federation`). Flower 1.39 has no accountant for the adaptive
wrappers: those runs report no client-level epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import (
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedvault.common.config import ClientDpMode, TrainingConfig
from fedvault.common.errors import ConfigError
from fedvault.common.protocol import CLIENT_WEIGHT, NUM_EXAMPLES
from fedvault.server.report import ClientDpFigures

_FIXED = (
    DifferentialPrivacyServerSideFixedClipping,
    DifferentialPrivacyClientSideFixedClipping,
)


class _CountsReleases:
    """Counts the aggregates an adaptive wrapper released (Flower's adaptive
    wrappers have no accountant, so nothing else counts them)."""

    releases = 0

    def aggregate_train(
        self, server_round: int, replies: Any
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None:
            self.releases += 1
        return arrays, metrics


class _ServerAdaptive(_CountsReleases, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class _ClientAdaptive(_CountsReleases, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


_ADAPTIVE = (_ServerAdaptive, _ClientAdaptive)
ADAPTIVE_TARGET_QUANTILE = 0.5
ADAPTIVE_CLIP_NORM_LR = 0.2


@dataclass(frozen=True)
class StrategyPlan:
    """The strategy of a run and what fedvault's round loop must know about it."""

    strategy: Strategy
    min_train_nodes: int
    sampled: int
    client_dp: ClientDpMode = "off"

    def privacy_spent(self) -> PrivacySpent | None:
        """Client-level privacy spent so far, from Flower's accountant (or None)."""
        if isinstance(self.strategy, _FIXED):
            return self.strategy.privacy_spent()
        return None

    def figures(self, population: int) -> ClientDpFigures | None:
        """What the reports say about client-level DP (None without it)."""
        wrapper = self.strategy
        if not isinstance(wrapper, (*_FIXED, *_ADAPTIVE)):
            return None
        spent = self.privacy_spent()
        counted = wrapper.releases if isinstance(wrapper, _CountsReleases) else 0
        return ClientDpFigures(
            epsilon=None if spent is None else spent.epsilon,
            releases=counted if spent is None else spent.num_releases,
            sampled=self.sampled,
            population=population,
            update_noise_multiplier=float(wrapper.noise_multiplier),
            clipping_norm=float(wrapper.clipping_norm),
        )


def sampled_per_round(training: TrainingConfig, *, available: int) -> int:
    """How many sites FedAvg's ``configure_train`` samples from ``available``."""
    return max(
        int(available * training.fraction_train), min(training.min_sites, available)
    )


def make_strategy(training: TrainingConfig, *, available: int) -> StrategyPlan:
    """FedAvg, FedProx or FedAdam (weighted by example count, or equally with
    client-level DP), or one of Flower's Byzantine-robust aggregations (FedMedian,
    FedTrimmedAvg, Krum, MultiKrum, Bulyan), wrapped for client-level DP if the run
    asks for it. Raises :class:`ConfigError` when a robust strategy has too few
    sites per round."""
    minimum = min(training.min_sites, available)
    common: dict[str, Any] = {
        "fraction_train": training.fraction_train,
        # Evaluate on as many sites as train: with 1,000 sites and 10 sampled, a
        # round must not ask all 1,000 to evaluate.
        "fraction_evaluate": training.fraction_train,
        "min_train_nodes": minimum,
        "min_evaluate_nodes": minimum,
        "min_available_nodes": minimum,
        "weighted_by_key": NUM_EXAMPLES,
    }
    if training.client_dp != "off":
        common["weighted_by_key"] = CLIENT_WEIGHT
    base = _base(
        training, common, sampled=sampled_per_round(training, available=available)
    )
    sampled = sampled_per_round(training, available=available)
    strategy = _with_client_dp(base, training, sampled=sampled, population=available)
    return StrategyPlan(strategy, minimum, sampled, training.client_dp)


def _base(training: TrainingConfig, common: dict[str, Any], *, sampled: int) -> FedAvg:
    """The aggregation itself; the Byzantine-robust ones (Flower's) need enough
    sites per round for ``malicious-sites``, else :class:`ConfigError`."""
    name, f = training.strategy, training.malicious_sites
    if name == "fedprox":
        return FedProx(proximal_mu=training.proximal_mu, **common)
    if name == "fedadam":
        return FedAdam(eta=0.05, eta_l=training.lr, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=training.trim_fraction, **common)
    needed = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}
    if name in needed and sampled < needed[name]:
        raise ConfigError(
            f"strategy: {name} with malicious-sites = {f} needs at least "
            f"{needed[name]} sites per round, the run has {sampled}"
        )
    if name == "krum":
        return Krum(num_malicious_nodes=f, **common)
    if name == "multikrum":
        return MultiKrum(
            num_malicious_nodes=f, num_nodes_to_select=sampled - f, **common
        )
    if name == "bulyan":
        return Bulyan(num_malicious_nodes=f, **common)
    return FedAvg(**common)


def _with_client_dp(
    base: FedAvg, t: TrainingConfig, *, sampled: int, population: int
) -> Strategy:
    z, c = t.client_noise_multiplier, t.client_clipping_norm
    if t.client_dp in ("server-fixed", "client-fixed"):
        from flwr.serverapp import RdpAccountant

        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=t.client_delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        fixed = (
            DifferentialPrivacyServerSideFixedClipping
            if t.client_dp == "server-fixed"
            else DifferentialPrivacyClientSideFixedClipping
        )
        return fixed(base, z, c, sampled, accountant=accountant)
    if t.client_dp in ("server-adaptive", "client-adaptive"):
        adaptive = (
            _ServerAdaptive if t.client_dp == "server-adaptive" else _ClientAdaptive
        )
        # Flower's default sampled/20 is too small for a handful of sites (it must
        # exceed z/2); z keeps the count noise at the update noise's scale.
        return adaptive(
            base,
            z,
            sampled,
            initial_clipping_norm=c,
            target_clipped_quantile=ADAPTIVE_TARGET_QUANTILE,
            clip_norm_lr=ADAPTIVE_CLIP_NORM_LR,
            clipped_count_stddev=max(sampled / 20, z),
        )
    return base
