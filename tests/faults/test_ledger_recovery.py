"""A site's ledger after the disk lost a committed record, or after a forgery
(issue 14, case 11): a torn record the head counts is recovered by charging its
round again, never by forgetting it; a consistent forgery (record edited, chain
and head recomputed) fails `verify` without the site key, and fails against an
anchor kept outside the site even with it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedvault.client import _ledger_files, _ledger_format
from fedvault.client._ledger_repair import NO_UPDATE
from fedvault.client.ledger import PrivacyLedger, verify_ledger
from fedvault.client.ledger_cli import ledger_app
from fedvault.common.privacy import Step

DATASET = "bc"
STEP = Step(noise_multiplier=1.1, sample_rate=0.05, steps=20)
runner = CliRunner()


def _cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(ledger_app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def _filled(state: Path, rounds: int = 3) -> PrivacyLedger:
    ledger = PrivacyLedger.open(state, DATASET, delta=1e-5, accountant="rdp")
    for r in range(1, rounds + 1):
        digest = hashlib.sha256(f"update-{r}".encode()).hexdigest()
        ledger.append("run-a", r, STEP, 1.0, digest)
    return ledger


def _forge(ledger: PrivacyLedger, *, with_key: bool) -> None:
    """Claim more noise on record 1 (less epsilon) and recompute every hash after
    it and the head: a consistent forgery."""
    lines = ledger.path.read_bytes().splitlines()
    prev = _ledger_format.genesis(DATASET)
    out = []
    for line in lines:
        data = json.loads(line)
        if data["seq"] == 0:
            data["noise_multiplier"] = 50.0
        data["prev_hash"] = prev
        body = {k: v for k, v in data.items() if k != "hash"}
        data["hash"] = prev = _ledger_format.digest(body)
        out.append(_ledger_format.canonical(data) + b"\n")
    ledger.path.write_bytes(b"".join(out))
    if with_key:
        _ledger_files.write_head(ledger._paths, len(out), prev)
        return
    head = ledger.path.with_suffix(".head")
    doc = json.loads(head.read_bytes())
    doc |= {"count": len(out), "hash": prev}
    head.write_bytes(_ledger_format.canonical(doc) + b"\n")


def test_a_torn_committed_record_is_charged_again_not_forgotten(tmp_path):
    ledger = _filled(tmp_path)
    spent = ledger.epsilon()
    kept = tmp_path / "bc.anchor.json"
    _cli("anchor", "--state", tmp_path, "--dataset", DATASET, "--output", kept)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[: data.rfind(b"\n", 0, -1) + 40])  # record 3 torn
    code, out = _cli("verify", "--state", tmp_path, "--dataset", DATASET)
    assert code == 2 and "repair" in out
    code, out = _cli("repair", "--state", tmp_path, "--dataset", DATASET)
    assert code == 2
    assert "record 3, the last one its head counts, is torn" in out
    assert "--recharge" in out and "noise multiplier=1.1" in out
    code, out = _cli("repair", "--state", tmp_path, "--dataset", DATASET, "--recharge")
    assert code == 0 and "recovery record" in out, out
    records = verify_ledger(tmp_path, DATASET)
    assert len(records) == 3 and records[2].update_sha256 == NO_UPDATE
    assert records[2].step == STEP and records[2].round == 3
    reopened = PrivacyLedger.open(tmp_path, DATASET, delta=1e-5, accountant="rdp")
    assert reopened.epsilon() == pytest.approx(spent)  # charged again, not dropped
    reopened.append("run-a", 4, STEP, 1.0, "a" * 64)
    assert _cli("verify", "--state", tmp_path, "--dataset", DATASET)[0] == 0
    # the recovered record is not the anchored one: the DPO needs a new anchor
    code, out = _cli(
        "verify", "--state", tmp_path, "--dataset", DATASET, "--anchor", kept
    )
    assert code == 2 and "record 3 differs from the anchor" in out


def test_a_torn_first_record_needs_its_planned_cost(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    ledger.path.write_bytes(ledger.path.read_bytes()[:30])
    base = ("repair", "--state", tmp_path, "--dataset", DATASET, "--recharge")
    code, out = _cli(*base)
    assert code == 2 and "--steps, --sample-rate and --noise-multiplier" in out
    policy = tmp_path / "site.toml"
    policy.write_text(
        '[privacy]\ndataset-id = "bc"\nepsilon-max = 10.0\ndelta = 1e-5\n'
    )
    cost = ("--steps", 20, "--sample-rate", 0.05, "--noise-multiplier", 1.1)
    code, out = _cli(*base, *cost, "--policy", policy)
    assert code == 0, out
    (record,) = verify_ledger(tmp_path, DATASET)
    assert record.step == STEP and record.epsilon > 0


def test_damage_beyond_the_tail_is_still_refused_as_it_is(tmp_path):
    ledger = _filled(tmp_path)
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    damaged = lines[0] + lines[2][:20]  # record 2 gone, record 3 torn
    ledger.path.write_bytes(damaged)
    code, _ = _cli("repair", "--state", tmp_path, "--dataset", DATASET, "--recharge")
    assert code == 2
    assert ledger.path.read_bytes() == damaged


def test_a_consistent_forgery_fails_without_the_site_key(tmp_path):
    ledger = _filled(tmp_path)
    _forge(ledger, with_key=False)
    code, out = _cli("verify", "--state", tmp_path, "--dataset", DATASET)
    assert code == 2 and "HMAC mismatch" in out


def test_an_anchor_catches_a_forgery_made_with_the_key(tmp_path):
    ledger = _filled(tmp_path)
    kept = tmp_path / "dpo" / "bc.anchor.json"
    kept.parent.mkdir()
    code, out = _cli(
        "anchor", "--state", tmp_path, "--dataset", DATASET, "--output", kept
    )
    assert code == 0 and json.loads(kept.read_text())["count"] == 3
    _forge(ledger, with_key=True)
    assert _cli("verify", "--state", tmp_path, "--dataset", DATASET)[0] == 0
    code, out = _cli(
        "verify", "--state", tmp_path, "--dataset", DATASET, "--anchor", kept
    )
    assert code == 2 and "record 3 differs from the anchor" in out


def test_an_anchor_catches_a_ledger_started_over(tmp_path):
    _filled(tmp_path)
    kept = tmp_path / "bc.anchor.json"
    _cli("anchor", "--state", tmp_path, "--dataset", DATASET, "--output", kept)
    fresh = tmp_path / "fresh"
    _filled(fresh, rounds=1)
    code, out = _cli("verify", "--state", fresh, "--dataset", DATASET, "--anchor", kept)
    assert code == 2 and "holds 1 records, the anchor" in out
    code, out = _cli(
        "verify", "--state", tmp_path, "--dataset", DATASET, "--anchor", kept
    )
    assert code == 0 and "anchor" in out


def test_an_older_unkeyed_head_is_keyed_only_when_asked(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    head = ledger.path.with_suffix(".head")
    doc = json.loads(head.read_bytes())
    del doc["mac"]
    doc["version"] = 1
    head.write_bytes(_ledger_format.canonical(doc) + b"\n")
    code, out = _cli("verify", "--state", tmp_path, "--dataset", DATASET)
    assert code == 2 and "not keyed" in out and "--accept-unkeyed-head" in out
    base = ("repair", "--state", tmp_path, "--dataset", DATASET)
    code, out = _cli(*base, "--accept-unkeyed-head")
    assert code == 0 and "keyed" in out
    assert len(verify_ledger(tmp_path, DATASET)) == 2
