"""Client-level DP and SecAgg+ settings: validation, the strategy they build, the CLI
and the reports (no Flower run)."""

import sys

import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
)

from fedvault.common.cli import main
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError
from fedvault.server.checks import expected_metrics, release_problem
from fedvault.server.report import (
    ClientDpFigures,
    client_dp_section,
    privacy_report,
    privacy_text,
)
from fedvault.server.strategy import make_strategy


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"client_dp": "everywhere"}, "client-dp"),
        ({"client_dp": "client-fixed", "strategy": "fedadam"}, "fedavg or fedprox"),
        ({"secagg": True, "client_dp": "server-fixed"}, "only sees the sum"),
        ({"secagg": True, "client_dp": "server-adaptive"}, "only sees the sum"),
        ({"secagg": True, "client_dp": "client-adaptive"}, "in the clear"),
        ({"secagg": True, "min_sites": 1}, "at least 2"),
        ({"client_noise_multiplier": 0.0}, "client-noise-multiplier"),
        ({"client_clipping_norm": float("inf")}, "client-clipping-norm"),
        ({"client_delta": 1.0}, "client-delta"),
    ],
)
def test_bad_settings_name_the_key(settings, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainingConfig(**settings)


def test_settings_travel_as_run_config_keys():
    t = TrainingConfig(secagg=True, client_dp="client-fixed", client_delta=1e-6)
    config = t.to_run_config()
    assert config["secagg"] is True and config["client-dp"] == "client-fixed"
    assert TrainingConfig.from_run_config(config) == t
    with pytest.raises(ConfigError, match="client-dp"):
        TrainingConfig.from_run_config(config | {"client-dp": "bogus"})


@pytest.mark.parametrize(
    ("mode", "wrapper", "accounted"),
    [
        ("server-fixed", DifferentialPrivacyServerSideFixedClipping, True),
        ("client-fixed", DifferentialPrivacyClientSideFixedClipping, True),
        ("server-adaptive", DifferentialPrivacyServerSideAdaptiveClipping, False),
        ("client-adaptive", DifferentialPrivacyClientSideAdaptiveClipping, False),
    ],
)
def test_each_mode_wraps_fedavg_with_equal_weights(mode, wrapper, accounted):
    t = TrainingConfig(client_dp=mode, client_noise_multiplier=2.0)
    plan = make_strategy(t, available=5)
    assert isinstance(plan.strategy, wrapper)
    assert plan.sampled == 5 and plan.strategy.num_sampled_clients == 5
    inner = plan.strategy.strategy
    assert type(inner) is FedAvg and inner.weighted_by_key == "client-weight"
    assert (plan.privacy_spent() is not None) is accounted
    figures = plan.figures(5)
    assert figures.sampled == 5 and figures.releases == 0
    if accounted:
        assert figures.update_noise_multiplier == 2.0
    else:  # Flower adds count noise and splits z between the two
        assert figures.update_noise_multiplier > 2.0


def test_sampling_follows_fraction_train_and_fedprox_is_accounted():
    t = TrainingConfig(client_dp="server-fixed", fraction_train=0.5, strategy="fedprox")
    plan = make_strategy(t, available=10)
    assert plan.sampled == 5 and isinstance(plan.strategy.strategy, FedProx)
    assert make_strategy(TrainingConfig(), available=3).figures(3) is None


def test_metrics_and_release_rules():
    t = TrainingConfig(client_dp="client-adaptive", dp=False)
    assert expected_metrics(t, train=True) == {
        "num-examples",
        "steps",
        "client-weight",
        "norm_bit",
    }
    assert "norm_bit" not in expected_metrics(t, train=False)
    fixed = TrainingConfig(client_dp="client-fixed")
    assert release_problem(fixed, sampled=3, usable=3, summed=None) is None
    assert "only 2 of the 3" in release_problem(fixed, sampled=3, usable=2, summed=2)
    plain = TrainingConfig(secagg=True)
    assert release_problem(plain, sampled=3, usable=2, summed=2) is None
    assert "cannot be split" in release_problem(plain, sampled=3, usable=2, summed=3)


def test_reports_say_what_applies():
    t = TrainingConfig(client_dp="client-fixed", secagg=True, dp=False)
    figures = ClientDpFigures(
        epsilon=4.25,
        releases=2,
        sampled=3,
        population=3,
        update_noise_multiplier=1.0,
        clipping_norm=1.0,
    )
    client = client_dp_section(t, figures=figures)
    report = privacy_report(t, {}, client_level=client)
    assert report["client_level_dp"]["epsilon"] == 4.25
    assert report["secure_aggregation"] is True
    assert report["secure_aggregation_protocol"]["weights"] == "1 (client-level DP)"
    text = privacy_text(report)
    assert "epsilon 4.250 at delta 1e-05 after 2 release(s)" in text
    assert "NO DIFFERENTIAL PRIVACY at the sites" in text
    assert "honest-but-curious coordinator learns only the sum" in text
    assert "whole site" in text
    off = privacy_text(privacy_report(TrainingConfig(dp=False), {}))
    assert "Client-level DP: off" in off and "No formal privacy guarantee" in off
    assert client_dp_section(TrainingConfig(), figures=None) is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--client-dp", "bogus"], "client-dp"),
        (["--secagg", "--client-dp", "server-fixed"], "only sees the sum"),
        (
            ["--client-dp", "client-fixed", "--client-noise-multiplier", "0"],
            "client-noise-multiplier",
        ),
    ],
)
def test_cli_refuses_bad_combinations(monkeypatch, capsys, tmp_path, args, needle):
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["fedvault", "simulate", *args, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("mode", ["server-adaptive", "client-adaptive"])
def test_adaptive_modes_count_their_releases(monkeypatch, mode):
    """Flower's adaptive wrappers have no accountant: the releases are still
    counted (a run of 3 rounds used to report `releases: 0`)."""
    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)  # as inside a Flower app

    plan = make_strategy(TrainingConfig(client_dp=mode), available=3)
    plan.strategy.current_arrays = ArrayRecord([np.zeros(4, dtype=np.float32)])

    def reply(node):
        sent = Message(RecordDict(), dst_node_id=node, message_type="train")
        sent.metadata.__dict__["_message_id"] = sent.object_id  # as Flower does
        metrics = {"client-weight": 1, "num-examples": 10, "norm_bit": 1}
        content = RecordDict(
            {
                "arrays": ArrayRecord([np.full(4, 0.1, dtype=np.float32)]),
                "metrics": MetricRecord(metrics),
            }
        )
        return Message(content, reply_to=sent)

    for server_round in (1, 2, 3):
        arrays, _ = plan.strategy.aggregate_train(
            server_round, [reply(n) for n in (1, 2, 3)]
        )
        assert arrays is not None
    assert plan.figures(3).releases == 3
