"""Continuous updates: a run started from a previous model (``init-model``) trains
on from the parent's weights with the parent's preprocessing, records its version
and the parent's hash, charges the same site ledgers, and checks drift;
``fedvault model lineage`` shows the chain."""

import json
import shutil

import numpy as np
import pytest
import torch
from trained_run import NODES, assert_refused, fedvault, make_run, records

from fedvault.common.models import build_model
from fedvault.server import lineage, trained
from fedvault.server.deploy import load_coordinator_config, run_config
from fedvault.server.settings import ServerSettings, init_model_of


def _bundle(path):
    return torch.load(path, weights_only=True)


def _distance(a, b):
    return float(
        torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))  # type: ignore[arg-type]
    )


def _privacy(out):
    report = json.loads((out / "privacy.json").read_text())
    return report["sites"]


@pytest.fixture(scope="module", name="versions")
def versions_fixture(tmp_path_factory):
    """Version 1, and version 2 started from it on the same sites' state folders
    (their ledgers) with one feature shifted at every site."""
    root = tmp_path_factory.mktemp("lineage")
    v1 = make_run(root / "v1", rounds=2, extra={"run-key": "v1"})
    states = {f"site.{p}.state": str(root / "v1" / f"state-{p}") for p in range(3)}
    shifted = records()
    shifted["mean radius"] *= 1.5
    v2 = make_run(
        root / "v2",
        rounds=1,
        frame=shifted,
        extra=states | {"init-model": str(v1 / "model.pt"), "run-key": "v2"},
    )
    return v1, v2


def test_version_two_starts_from_its_parent_and_records_it(versions):
    v1, v2 = versions
    parent, child = _bundle(v1 / "model.pt"), _bundle(v2 / "model.pt")
    assert parent["version"] == 1 and parent["parent"] is None
    assert child["version"] == 2
    assert child["parent"]["sha256"] == lineage.file_hash(v1 / "model.pt")
    assert child["lineage"] == [child["parent"]]
    # the parent's preprocessing is kept, although the new data's means moved
    assert (v2 / "preprocessing.json").read_text() == (
        v1 / "preprocessing.json"
    ).read_text()
    # round 1's global model was the parent: one noisy round later the weights are
    # far nearer the parent's than the fresh initialisation a new run starts from
    torch.manual_seed(3)  # the run's seed, as the coordinator seeds its init
    prep = trained.load(v2).prep
    fresh = build_model("mlp", in_features=prep.num_features, num_classes=2)
    fresh = fresh.state_dict()
    near, far = (
        _distance(child["state_dict"], parent["state_dict"]),
        _distance(child["state_dict"], fresh),
    )
    assert near < far / 3, (near, far)


def test_the_sites_ledgers_keep_charging_the_same_budget(versions):
    v1, v2 = versions
    before, after = _privacy(v1), _privacy(v2)
    assert set(before) == set(after) == {f"site-{p + 1}" for p in range(len(NODES))}
    for name in before:
        # the lifetime epsilon of the dataset grows by the second run's spend
        assert after[name]["epsilon_lifetime"] > before[name]["epsilon_lifetime"]
        assert after[name]["rounds_trained"] == 1
        # composed by the accountant over both runs' rounds (RDP: below the sum)
        lifetime, spent = after[name]["epsilon_lifetime"], after[name]["epsilon_spent"]
        assert spent < lifetime < before[name]["epsilon_lifetime"] + spent


def test_drift_flags_the_shifted_feature_only(versions):
    _, v2 = versions
    doc = json.loads((v2 / "drift.json").read_text())
    flagged = [f["column"] for f in doc["features"] if f["flagged"]]
    assert flagged == ["mean radius"], flagged
    top = doc["features"][0]
    assert top["measure"] == "mean shift" and top["value"] > 1.0
    assert {f["column"] for f in doc["features"]} >= {"clinic", "label", "mean area"}


def test_lineage_shows_the_chain(versions, monkeypatch, capsys):
    v1, v2 = versions
    code, out, err = fedvault(
        monkeypatch, capsys, "model", "lineage", v2, "--format", "json"
    )
    assert code == 0, err
    models = json.loads(out)["models"]
    assert [(m["version"], m["status"]) for m in models] == [
        (2, "this"),
        (1, "verified"),
    ]
    assert models[1]["sha256"] == lineage.file_hash(v1 / "model.pt")
    code, out, err = fedvault(monkeypatch, capsys, "model", "lineage", v2)
    assert code == 0 and "verified" in out and "Model lineage" in out


def test_a_model_file_from_before_versions_loads_as_version_one(
    versions, tmp_path, monkeypatch, capsys
):
    v1, _ = versions
    bundle = _bundle(v1 / "model.pt")
    for key in ("version", "parent", "lineage", "received"):
        bundle.pop(key)
    old = tmp_path / "old.pt"
    torch.save(bundle, old)
    assert trained.load(old).rounds_completed == 2
    code, out, err = fedvault(
        monkeypatch, capsys, "model", "lineage", old, "--format", "json"
    )
    assert code == 0, err
    (model,) = json.loads(out)["models"]
    assert model == {
        "version": 1,
        "sha256": lineage.file_hash(old),
        "path": str(old),
        "status": "this",
    }


def test_lineage_refuses_what_is_not_a_model(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    assert_refused(
        *fedvault(monkeypatch, capsys, "model", "lineage", bad), "not a readable"
    )
    assert_refused(
        *fedvault(monkeypatch, capsys, "model", "lineage", tmp_path / "nope"),
        "no such run folder",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "logreg"], "this run trains a logreg"),
        (["--data", "{csv}", "--target", "target"], "numeric column(s) missing"),
    ],
)
def test_simulate_refuses_a_parent_that_does_not_fit_before_writing(
    versions, tmp_path, monkeypatch, capsys, args, needle
):
    v1, _ = versions
    csv = tmp_path / "fewer.csv"
    records().drop(columns=["mean radius"]).to_csv(csv, index=False)
    out = tmp_path / "run"
    args = [a.replace("{csv}", str(csv)) for a in args]
    code, _, err = fedvault(
        monkeypatch, capsys, "simulate", "--init-model", v1, "--out", out, *args
    )
    assert code == 2, err
    assert needle in err and "init-model" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_simulate_refuses_a_corrupted_parent_before_writing(
    tmp_path, monkeypatch, capsys
):
    bad = tmp_path / "model.pt"
    bad.write_bytes(np.arange(10).tobytes())
    out = tmp_path / "run"
    code, _, err = fedvault(
        monkeypatch, capsys, "simulate", "--init-model", bad, "--out", out
    )
    assert code == 2 and "init-model" in err and "not a readable model file" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_report_shows_the_drift_and_checks_the_model_file(
    versions, tmp_path, monkeypatch, capsys
):
    v1, v2 = versions
    page = tmp_path / "report.html"
    code, _, err = fedvault(monkeypatch, capsys, "report", v2, "--out", page)
    assert code == 0, err
    html = page.read_text()
    assert "Drift since the parent model" in html
    assert f"1 of 32 features shifted since {v1 / 'model.pt'}" in html
    # a model file of another run in the folder: refused, nothing written
    other = tmp_path / "other"
    shutil.copytree(v2, other)
    shutil.copy(v1 / "model.pt", other / "model.pt")
    assert_refused(
        *fedvault(monkeypatch, capsys, "report", other, "--out", tmp_path / "x.html"),
        "is not the model of the run",
    )
    (other / "model.pt").write_bytes(b"\0" * 64)
    assert_refused(*fedvault(monkeypatch, capsys, "report", other), "not a readable")
    assert not (tmp_path / "x.html").exists() and not (other / "report.html").exists()


def test_server_start_takes_init_model_from_its_config_or_option(
    versions, tmp_path, monkeypatch, capsys
):
    v1, _ = versions
    config = tmp_path / "coordinator.toml"
    config.write_text(
        '[coordinator]\nrun-dir = "run"\ninit-model = "parent.pt"\n'
        "[training]\nrounds = 2\n"
    )
    cfg = load_coordinator_config(config)
    settings = ServerSettings.from_run_config(
        run_config(cfg, tmp_path / "out", run_key="k")
    )
    assert settings.init_model == tmp_path / "parent.pt"
    # a resumed run keeps the parent it started from (given as an option then)
    started = run_config(cfg, tmp_path / "out", run_key="k", init_model=v1)
    assert init_model_of(started) == v1
    again = run_config(cfg, tmp_path / "out", run_key="k", resume=True, init_model=v1)
    assert ServerSettings.from_run_config(again).init_model == v1
    # the config's file is missing: refused before anything starts
    code, stdout, err = fedvault(
        monkeypatch, capsys, "server", "start", "--config", config, "--insecure"
    )
    assert_refused(code, stdout, err, "init-model")
    assert "parent.pt" in err and not (tmp_path / "run").exists()
    # the option overrides the key; a parent of another architecture is refused
    config.write_text(config.read_text().replace("rounds = 2", 'model = "logreg"'))
    code, stdout, err = fedvault(
        monkeypatch,
        capsys,
        "server",
        "start",
        "--config",
        config,
        "--insecure",
        "--init-model",
        v1,
    )
    assert_refused(code, stdout, err, "this run trains a logreg")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_simulate_on_a_state_folder_charges_the_same_ledgers(
    tmp_path, monkeypatch, capsys
):
    """Two `fedvault simulate` runs on one --state, the second from the first's
    model: the second is version 2 and each site's lifetime epsilon composes both."""
    common = ["--state", tmp_path / "sites", "--sites", "2", "--rounds", "1"]
    common += ["--epsilon", "1", "--format", "json"]
    code, out, err = fedvault(
        monkeypatch,
        capsys,
        "simulate",
        *common,
        "--site-budget",
        "4",
        "--out",
        tmp_path / "v1",
    )
    assert code == 0, err
    first = json.loads(out)["sites"]
    code, out, err = fedvault(
        monkeypatch,
        capsys,
        "simulate",
        *common,
        "--init-model",
        tmp_path / "v1",
        "--out",
        tmp_path / "v2",
    )
    assert code == 0, err
    second = json.loads(out)["sites"]
    assert set(first) == set(second) and len(first) == 2
    for name, site in second.items():
        assert site["rounds_trained"] == 1
        lifetime, spent = site["epsilon_lifetime"], site["epsilon_spent"]
        assert spent < lifetime < first[name]["epsilon_lifetime"] + spent
    child = _bundle(tmp_path / "v2" / "model.pt")
    assert child["version"] == 2
    assert child["parent"]["sha256"] == lineage.file_hash(tmp_path / "v1" / "model.pt")
