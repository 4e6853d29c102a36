"""The model card and record of processing every run writes (model_card.json and
model_card.md), filled from what the run recorded."""

import json
import math

import pytest
from trained_run import assert_refused, fedvault, run_fixture  # noqa: F401 (`run`)

from fedvault.server import model_card


def _wilson(k, n, z=1.959963984540054):
    """The Wilson score interval, written out (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_every_run_writes_a_card_filled_from_the_run(run):
    folder, test = run
    card = json.loads((folder / "model_card.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    privacy = json.loads((folder / "privacy.json").read_text())
    metrics = card["metrics"]["test_split"]
    assert metrics["rows"] == len(test)
    assert metrics["data"] == "the coordinator's test data (test.parquet)"
    assert metrics["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert metrics["auc"] == pytest.approx(summary["final"]["auc"])
    correct = round(metrics["accuracy"] * len(test))
    assert metrics["accuracy_ci95"] == pytest.approx(_wilson(correct, len(test)))
    low, high = metrics["auc_ci95"]
    assert low < metrics["auc"] <= high <= 1
    sites = {s["name"]: s for s in card["data"]["sites"]}
    assert set(sites) == set(summary["sites"]) == {"site-1", "site-2", "site-3"}
    for name, site in summary["sites"].items():
        assert sites[name]["rows_released"] == site["examples"]
        assert card["privacy"]["epsilon_per_site"][name] == site["epsilon_spent"]
    assert card["data"]["rows_released"] == sum(
        s["examples"] for s in summary["sites"].values()
    )
    assert card["privacy"]["delta"] == privacy["delta"] == 1e-5
    # each site's own (noisy) validation release, per site, from the last round
    per_site = card["metrics"]["per_site"]
    assert set(per_site) == {"site-1", "site-2", "site-3"}
    last = summary["history"][-1]["val_sites"]
    for name, values in per_site.items():
        assert values == last[name]
        assert 0.0 <= values["accuracy"] <= 1.0 and values["num-examples"] > 0
    text = (folder / "model_card.md").read_text()
    assert "Per site: site-1 " in text and "noisy" in text
    assert card["model"]["architecture"] == "MLP 33-128-1 (ReLU)"
    record = card["record_of_processing"]
    assert record["controller"].startswith("[OPERATOR:")
    assert "clinic" in record["categories_of_personal_data"][0]
    text = (folder / "model_card.md").read_text()
    for heading in (
        "## Intended use and limits",
        "## Metrics",
        "## Privacy",
        "## Record of processing (GDPR Article 30(1))",
    ):
        assert heading in text
    worst = max(s["epsilon_spent"] for s in summary["sites"].values())
    assert f"e^{math.ceil(worst * 1000 - 1e-9) / 1000:g}" in text  # a bound: up
    assert "Wilson score interval" in text


def test_auc_interval_matches_hanley_mcneil():
    # A = 0.9, 50 positives, 50 negatives: Q1 = 0.9/1.1, Q2 = 2*0.81/1.9,
    # SE^2 = (0.09 + 49*(Q1 - 0.81) + 49*(Q2 - 0.81)) / 2500 -> SE = 0.032124
    low, high = model_card.auc_interval(0.9, 50, 50)
    assert (high - low) / 2 / 1.959963984540054 == pytest.approx(0.032124, abs=1e-6)
    assert model_card.auc_interval(0.99, 50, 50)[1] == 1.0  # clipped


def test_card_command_rewrites_with_a_given_test_file(
    run, tmp_path, monkeypatch, capsys
):
    folder, test = run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.pt", "summary.json", "privacy.json", "preprocessing.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    code, _, err = fedvault(monkeypatch, capsys, "model", "card", copy)
    assert code == 0, err  # no test file and no card before: no test metrics
    assert (
        json.loads((copy / "model_card.json").read_text())["metrics"]["test_split"]
        is None
    )
    assert "No central test split in this run" in (copy / "model_card.md").read_text()
    data = tmp_path / "half.csv"
    test.head(50).to_csv(data, index=False)
    code, _, err = fedvault(monkeypatch, capsys, "model", "card", copy, "--data", data)
    assert code == 0, err
    card = json.loads((copy / "model_card.json").read_text())
    assert card["metrics"]["test_split"]["rows"] == 50
    assert card["metrics"]["test_split"]["data"] == str(data)


def test_card_of_a_folder_without_a_run(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stdout, err = fedvault(monkeypatch, capsys, "model", "card", empty)
    assert_refused(code, stdout, err, "no summary.json; not a finished fedvault run")
    assert list(empty.iterdir()) == []
