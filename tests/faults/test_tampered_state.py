"""A site's own state damaged between two runs (its ledger, its policy file, its
data): the site refuses to train with a reason filed under its name, never spends
budget on a ledger it cannot trust, leaves the damaged file as it was for its
operator, and the other sites' run goes on."""

import json
from pathlib import Path

import pytest
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [11, 22, 33]


def _run(tmp_path: Path, local_grid, make_contexts, run_config, name: str) -> dict:
    config = run_config | {"out-dir": str(tmp_path / name), "run-key": name}
    grid = local_grid(client_app, make_contexts(NODES, config))
    Federation(grid, ServerSettings.from_run_config(config)).run()
    return json.loads((tmp_path / name / "summary.json").read_text())


def _edit_record(ledger: Path) -> None:
    lines = ledger.read_text().splitlines()  # first the summary, then round 1
    trained = next(i for i, line in enumerate(lines) if '"round":1,' in line)
    lines[trained] = lines[trained].replace('"round":1,', '"round":7,')
    ledger.write_text("\n".join(lines) + "\n")


def _torn_tail(ledger: Path) -> None:
    ledger.write_bytes(ledger.read_bytes()[:-25])


def _edited_head(ledger: Path) -> None:
    head = ledger.with_suffix(".head")
    head.write_text(head.read_text().replace("1", "2", 1))


def _deleted(path: Path) -> None:
    path.unlink()


LEDGER_CASES = {
    "record edited": (_edit_record, "verification"),
    "torn last line": (_torn_tail, "verification"),
    "head edited": (_edited_head, "verification"),
    "ledger deleted": (_deleted, "verification"),
}

POLICY_CASES = {
    "invalid TOML": ("[privacy\n", "invalid TOML"),
    "unknown key": (
        '[privacy]\ndataset-id = "bc"\nepsilon-max = 10.0\ndelta = 1e-5\nbogus = 1\n',
        "unknown key 'bogus'",
    ),
    "no privacy table": ("[site]\nname = 'x'\n", "missing [privacy] table"),
    "negative budget": (
        '[privacy]\ndataset-id = "bc"\nepsilon-max = -1.0\ndelta = 1e-5\n',
        "epsilon-max: must be a finite number > 0",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LEDGER_CASES))
def test_a_damaged_ledger_blocks_only_its_site(
    tmp_path, local_grid, make_contexts, case
):
    run_config = site_run_config(tmp_path, NODES, rounds=1)
    first = _run(tmp_path, local_grid, make_contexts, run_config, "first")
    assert first["sites"]["site-1"]["rounds_trained"] == 1
    ledger = tmp_path / "state-0" / "ledger" / "bc.jsonl"
    damage, reason = LEDGER_CASES[case]
    damage(ledger)
    damaged = {p: p.read_bytes() for p in ledger.parent.iterdir() if p.is_file()}
    second = _run(tmp_path, local_grid, make_contexts, run_config, "second")
    assert second["status"] == "completed"
    # The site's first message (its summary release, charged to that ledger) is
    # already refused: it takes no part in the run.
    assert "site-1" not in second["sites"]
    why = second["excluded_sites"]["site-1"]
    assert why.startswith("declined (policy)") and reason in why
    assert second["sites"]["site-2"]["rounds_trained"] == 1
    # the damaged files are left as they were, for the operator to look at
    assert {p: p.read_bytes() for p in damaged} == damaged


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_a_broken_policy_file_rules_out_only_its_site(
    tmp_path, local_grid, make_contexts, case
):
    run_config = site_run_config(tmp_path, NODES, rounds=1)
    text, reason = POLICY_CASES[case]
    (tmp_path / "state-0" / "site.toml").write_text(text)
    summary = _run(tmp_path, local_grid, make_contexts, run_config, "run")
    assert summary["status"] == "completed"
    # refused at the edge of the first message, under the site's own name
    assert "site-1" not in summary["sites"]
    why = summary["excluded_sites"]["site-1"]
    assert why.startswith("declined (policy): the site's policy cannot be read")
    assert reason in why
    assert not (tmp_path / "state-0" / "ledger" / "bc.jsonl").exists()
    assert summary["sites"]["site-2"]["rounds_trained"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "not parquet"])
def test_a_site_whose_data_is_gone_or_garbage_is_named(
    tmp_path, local_grid, make_contexts, case
):
    run_config = site_run_config(tmp_path, NODES, rounds=1)
    data = tmp_path / "site-0.parquet"
    if case == "missing":
        data.unlink()
    else:
        data.write_bytes(b"PAR1 this is not a parquet file")
    summary = _run(tmp_path, local_grid, make_contexts, run_config, "run")
    assert summary["status"] == "completed"
    assert "site-1" not in summary["sites"]
    # under the site's own name, as one line: the error's class and message
    ((name, why),) = summary["excluded_sites"].items()
    assert name == "site-1" and why.startswith("DataError: ")
    expected = "cannot read" if case == "missing" else "not a readable Parquet file"
    assert expected in why and "site-0.parquet" in why
    assert "\n" not in why and "Traceback" not in why
    assert summary["sites"]["site-2"]["rounds_trained"] == 1
