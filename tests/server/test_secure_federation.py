"""fedvault's whole round loop (Federation) with the real fedvault ClientApp, over an
in-process grid: SecAgg+ and client-level DP, alone and together, site policies, and
protocol mismatches. Real DP-SGD at the sites; no SuperLink, no Ray."""

import json
import math

import numpy as np
import pytest
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.common.errors import FederationError
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [101, 202, 303]


def _run(tmp_path, local_grid, make_contexts, *, server=None, site=None, **kw):
    run_config = site_run_config(tmp_path, NODES, **kw)
    server_config = run_config | (server or {})
    grid = local_grid(client_app, make_contexts(NODES, run_config | (site or {})))
    Federation(grid, ServerSettings.from_run_config(server_config)).run()
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    privacy = json.loads((out / "privacy.json").read_text())
    return grid, summary, privacy, (out / "privacy.txt").read_text()


def _flower_epsilon(releases, *, z, delta, population):
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    event = GaussianPrivacyEvent(
        noise_multiplier=z, sample_size=population, population_size=population
    )
    accountant.compose(event, releases)
    return accountant.get_privacy_spent().epsilon


def test_secagg_with_client_dp_releases_only_noised_sums(
    tmp_path, local_grid, make_contexts
):
    grid, summary, privacy, text = _run(
        tmp_path,
        local_grid,
        make_contexts,
        secagg=True,
        client_dp="client-fixed",
        client_noise_multiplier=1.5,
        client_clipping_norm=0.5,
        require_secagg=(0,),
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    for site in summary["sites"].values():
        assert site["rounds_trained"] == 2 and site["declines"] == []
        assert 0 < site["epsilon_spent"] <= 3.0
    client = summary["client_dp"]
    assert client["mode"] == "client-fixed" and client["releases"] == 2
    expected = _flower_epsilon(2, z=1.5, delta=1e-5, population=3)
    assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert privacy["client_level_dp"] == client
    assert privacy["secure_aggregation"] is True
    assert summary["secure_aggregation"]["weights"] == "1 (client-level DP)"
    shown = math.floor(expected * 1000) / 1000  # reports round epsilon down
    assert f"epsilon {shown:.3f}" in text and "SecAgg+" in text
    # Everything the coordinator received from training: no update in the clear.
    train_replies = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train_replies) == 2 * 4 * 3  # rounds x SecAgg+ stages x sites
    for reply in train_replies:
        assert not reply.has_error()
        assert all(len(r) == 0 for r in reply.content.array_records.values())


def test_a_declining_site_under_secagg_is_left_out_of_the_sum(
    tmp_path, local_grid, make_contexts
):
    _, summary, _, _ = _run(
        tmp_path,
        local_grid,
        make_contexts,
        secagg=True,
        epsilon=100.0,
        noise_multiplier=2.0,
        budget={2: 0.2},  # the summary fits, no training round does
    )
    assert summary["status"] == "completed"
    assert [h["sites_trained"] for h in summary["history"]] == [2, 2]
    declines = summary["sites"]["site-3"]["declines"]
    assert [(d["round"], d["reason"]) for d in declines] == [
        (1, "budget"),
        (2, "budget"),
    ]
    assert "would bring lifetime epsilon" in declines[0]["detail"]
    assert summary["sites"]["site-3"]["failures"] == []
    assert summary["final"]["accuracy"] > 0.8


def test_site_policy_requiring_secagg_is_respected(tmp_path, local_grid, make_contexts):
    _, plain, _, _ = _run(
        tmp_path / "plain", local_grid, make_contexts, rounds=1, require_secagg=(1,)
    )
    # The site refuses the whole run at its edge: no summary, no update, nothing.
    assert "site-2" not in plain["sites"]
    assert plain["excluded_sites"]["site-2"] == (
        "declined (policy): the site requires secure aggregation; the run has it off"
    )
    assert plain["status"] == "completed" and plain["history"][0]["sites_trained"] == 2

    _, secure, _, _ = _run(
        tmp_path / "secure",
        local_grid,
        make_contexts,
        rounds=1,
        secagg=True,
        require_secagg=(1,),
    )
    assert all(s["declines"] == [] for s in secure["sites"].values())
    assert secure["history"][0]["sites_trained"] == 3


def test_client_dp_releases_nothing_when_a_sampled_site_is_missing(
    tmp_path, local_grid, make_contexts
):
    _, summary, privacy, _ = _run(
        tmp_path,
        local_grid,
        make_contexts,
        client_dp="server-fixed",
        budget={2: 0.2},  # the summary fits, no training round does
    )
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 0
    assert "client-level DP: only 2 of the 3" in summary["stop_reason"]
    assert privacy["client_level_dp"]["releases"] == 0


@pytest.mark.parametrize(
    ("server", "site"),
    [
        ({"secagg": False}, {"secagg": True}),
        ({"secagg": True}, {"secagg": False}),
        # SecAgg+ on both sides, but only the coordinator expects site clipping
        ({"secagg": True, "client-dp": "client-fixed"}, {"secagg": True}),
    ],
)
def test_a_protocol_mismatch_fails_the_run(
    tmp_path, local_grid, make_contexts, server, site
):
    with pytest.raises(FederationError, match="refused the round's protocol"):
        _run(tmp_path, local_grid, make_contexts, server=server, site=site)
    events = (tmp_path / "out" / "progress.jsonl").read_text()
    assert '"error"' in events


@pytest.mark.parametrize(
    "mode", ["server-fixed", "client-fixed", "server-adaptive", "client-adaptive"]
)
def test_client_dp_modes_in_the_clear(tmp_path, local_grid, make_contexts, mode):
    grid, summary, privacy, text = _run(
        tmp_path,
        local_grid,
        make_contexts,
        client_dp=mode,
        client_noise_multiplier=1.0,
        client_clipping_norm=0.2,
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    client = privacy["client_level_dp"]
    assert client["mode"] == mode and client["weighting"].startswith("equal")
    if mode.endswith("fixed"):
        expected = _flower_epsilon(2, z=1.0, delta=1e-5, population=3)
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert client["releases"] == 2
    else:
        assert client["epsilon"] is None and "no epsilon claimed" in text
        assert client["update_noise_multiplier"] > 1.0  # Flower's split for the count
    if mode.startswith("client"):
        # the coordinator only ever received updates clipped at the sites
        sent = [m for m in grid.sent if m.metadata.message_type == "train"]
        got = [m for m in grid.received if m.metadata.message_type == "train"]
        for message, reply in zip(sent, got, strict=True):
            before = message.content.array_records["arrays"].to_numpy_ndarrays()
            after = reply.content.array_records["arrays"].to_numpy_ndarrays()
            pairs = zip(after, before, strict=True)
            norm = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs))
            limit = message.content.config_records["config"]["clipping_norm"]
            assert norm <= limit * (1 + 1e-5)
