"""Build the Message-API strategy (flwr.serverapp.strategy) a run asks for."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedvault.common.config import TrainingConfig


def make_strategy(training: TrainingConfig, *, available: int) -> FedAvg:
    """FedAvg, FedProx or FedAdam, weighting updates by each site's example count."""
    common = {
        "fraction_train": training.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min(training.min_sites, available),
        "min_evaluate_nodes": min(training.min_sites, available),
        "min_available_nodes": min(training.min_sites, available),
        "weighted_by_key": "num-examples",
    }
    if training.strategy == "fedprox":
        return FedProx(proximal_mu=training.proximal_mu, **common)  # type: ignore[arg-type]
    if training.strategy == "fedadam":
        return FedAdam(eta=0.05, eta_l=training.lr, **common)  # type: ignore[arg-type]
    return FedAvg(**common)  # type: ignore[arg-type]
