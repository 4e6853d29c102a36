"""`--client-dp` and `--secagg`, alone and together, on Flower's simulation runtime
(real SuperLink, Ray, ClientApp processes): 3 sites x 2 rounds each.

What the coordinator receives under SecAgg+, dropouts and protocol mismatches are
checked in-process in tests/server/test_secagg.py and test_secure_federation.py."""

import json
from pathlib import Path

import pytest
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from fedvault.client.access_log import access_log
from fedvault.server import simulate as sim
from fedvault.server.received import read_received

pytestmark = pytest.mark.slow

SMALL = {"sites": 3, "rounds": 2, "timeout": 600.0, "seed": 5}


def _run(tmp_path: Path, name: str, **values):
    out = tmp_path / name
    summary = sim.run(sim.load_config(SMALL | values), out)
    privacy = json.loads((out / "privacy.json").read_text())
    return summary, privacy, (out / "privacy.txt").read_text()


def _flower_epsilon(releases: int, *, z: float, sites: int = 3) -> float:
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    event = GaussianPrivacyEvent(
        noise_multiplier=z, sample_size=sites, population_size=sites
    )
    accountant.compose(event, releases)
    return accountant.get_privacy_spent().epsilon


def _completed(summary):
    assert summary["status"] == "completed", summary["stop_reason"]
    assert summary["rounds_completed"] == 2
    for site in summary["sites"].values():
        assert site["rounds_trained"] == 2 and site["declines"] == []
        assert site["failures"] == [] and 0 < site["epsilon_spent"] <= 3.0


def test_client_level_dp_alone(tmp_path):
    summary, privacy, text = _run(
        tmp_path, "cdp", **{"client-dp": "client-fixed", "client-noise-multiplier": 2.0}
    )
    _completed(summary)
    client = summary["client_dp"]
    assert client["mode"] == "client-fixed" and client["releases"] == 2
    assert client["epsilon"] == pytest.approx(_flower_epsilon(2, z=2.0), rel=1e-9)
    assert privacy["client_level_dp"] == client
    assert privacy["secure_aggregation"] is False
    assert summary["secure_aggregation"] is None
    assert "Client-level DP: client-fixed (z = 2" in text
    assert "Secure aggregation: off" in text


def test_secure_aggregation_alone(tmp_path):
    states = tmp_path / "states"
    summary, privacy, text = _run(tmp_path, "secagg", secagg=True, state=str(states))
    _completed(summary)
    # each masked vector a site's access log says it sent is one the coordinator
    # recorded receiving from it, digested alike on both sides
    received = {
        (e["site"], e["round"], e["arrays"]) for e in read_received(tmp_path / "secagg")
    }
    sent = {
        (folder.name, e["round"], e["arrays"])
        for folder in states.iterdir()
        for e in access_log(folder).entries()
        if e["message"] == "train secagg:collect_masked_vectors"
    }
    assert len(sent) == 3 * 2 and received == sent
    assert summary["final"]["accuracy"] > 0.8  # same model quality as in the clear
    assert summary["client_dp"] is None and privacy["client_level_dp"] is None
    assert privacy["secure_aggregation"] is True
    assert privacy["secure_aggregation_protocol"]["weights"].startswith("num-examples")
    assert "Secure aggregation: on (SecAgg+)" in text
    assert "sees only the sum" in text


def test_secure_aggregation_with_client_level_dp(tmp_path):
    summary, privacy, text = _run(
        tmp_path, "both", secagg=True, **{"client-dp": "client-fixed"}
    )
    _completed(summary)
    client = privacy["client_level_dp"]
    assert client["clipping"].endswith("at the site (Flower client mod)")
    assert client["epsilon"] == pytest.approx(_flower_epsilon(2, z=1.0), rel=1e-9)
    assert privacy["secure_aggregation_protocol"]["weights"] == "1 (client-level DP)"
    assert "Secure aggregation: on (SecAgg+)" in text
    assert f"epsilon {client['epsilon']:.3f}" in text
