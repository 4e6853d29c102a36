"""The privacy ledger's file format: append-only, hash-chained, fail closed."""

import hashlib
import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from fedvault.client import _ledger_files, _ledger_format
from fedvault.client import ledger as ledger_module
from fedvault.client.ledger import PrivacyLedger, repair_torn_tail, verify_ledger
from fedvault.client.ledger_cli import ledger_app
from fedvault.client.policy import SitePolicy
from fedvault.common.errors import BudgetExceededError, ConfigError, IntegrityError
from fedvault.common.privacy import Step, epsilon_spent

DATASET = "icu-2024"
DELTA = 1e-5
STEP = Step(noise_multiplier=1.2, sample_rate=0.1, steps=10)
POLICY = SitePolicy(dataset_id=DATASET, epsilon_max=10.0, delta=DELTA)


def _digest(i):
    return hashlib.sha256(f"update-{i}".encode()).hexdigest()


def _open(state):
    return PrivacyLedger.open(state, DATASET, delta=DELTA, accountant="rdp")


def _filled(state, rounds=3, run_id="run-a"):
    ledger = _open(state)
    for r in range(1, rounds + 1):
        ledger.append(run_id, r, STEP, 1.0, _digest(r))
    return ledger


def _lines(ledger):
    return ledger.path.read_bytes().splitlines(keepends=True)


def _head(ledger):
    return ledger.path.with_suffix(".head")


# --- recording ------------------------------------------------------------------


def test_a_new_ledger_is_empty_and_spends_nothing(tmp_path):
    ledger = _open(tmp_path)
    assert ledger.records() == []
    assert ledger.history() == []
    assert ledger.epsilon() == 0.0
    assert ledger.path == tmp_path / "ledger" / f"{DATASET}.jsonl"
    assert verify_ledger(tmp_path, DATASET) == []


def test_append_records_every_field_and_chains_by_hash(tmp_path):
    ledger = _open(tmp_path)
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    first = ledger.append("run-a", 1, STEP, 0.9, _digest(1), now=now)
    second = ledger.append("run-a", 2, STEP, 0.9, _digest(2))
    assert (first.run_id, first.round, first.steps) == ("run-a", 1, 10)
    assert (first.sample_rate, first.noise_multiplier, first.max_grad_norm) == (
        0.1,
        1.2,
        0.9,
    )
    assert (first.delta, first.accountant) == (DELTA, "rdp")
    assert first.update_sha256 == _digest(1)
    assert first.time == "2026-11-28T12:00:00.000000+00:00"
    assert first.epsilon == epsilon_spent([STEP], delta=DELTA)
    assert second.epsilon == epsilon_spent([STEP, STEP], delta=DELTA)
    assert second.prev_hash == first.hash
    assert second.seq == 1
    assert [json.loads(line)["hash"] for line in _lines(ledger)] == [
        first.hash,
        second.hash,
    ]


def test_records_survive_reopening_and_the_run_noise_is_found(tmp_path):
    _filled(tmp_path, rounds=2, run_id="run-a")
    reopened = _open(tmp_path)
    assert [(r.run_id, r.round) for r in reopened.records()] == [
        ("run-a", 1),
        ("run-a", 2),
    ]
    assert reopened.history() == [STEP, STEP]
    assert reopened.planned_noise("run-a") == STEP.noise_multiplier
    assert reopened.planned_noise("run-b") is None


def test_epsilon_is_cached_until_the_history_changes(tmp_path, monkeypatch):
    ledger = _filled(tmp_path, rounds=2)
    calls = []

    def counting(history, **kwargs):
        calls.append(sum(s.steps for s in history))
        return epsilon_spent(history, **kwargs)

    monkeypatch.setattr(ledger_module, "epsilon_spent", counting)
    first = ledger.epsilon()
    assert ledger.epsilon() == first
    assert calls == [20]
    ledger.append("run-a", 3, STEP, 1.0, _digest(3))  # one call to price the record
    assert ledger.epsilon() > first
    assert calls == [20, 30, 30]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("", 1, STEP, 1.0, _digest(1)), "run-id"),
        (("r", -1, STEP, 1.0, _digest(1)), "round"),
        (
            (
                "r",
                1,
                Step(noise_multiplier=1.0, sample_rate=0.1, steps=0),
                1.0,
                _digest(1),
            ),
            "steps",
        ),
        (
            (
                "r",
                1,
                Step(noise_multiplier=1.0, sample_rate=1.5, steps=1),
                1.0,
                _digest(1),
            ),
            "sample-rate",
        ),
        (
            (
                "r",
                1,
                Step(noise_multiplier=0.0, sample_rate=0.1, steps=1),
                1.0,
                _digest(1),
            ),
            "noise-multiplier",
        ),
        (("r", 1, STEP, float("inf"), _digest(1)), "max-grad-norm"),
        (("r", 1, STEP, 1.0, "not-a-hash"), "update-hash"),
        (("r", 1, STEP, 1.0, _digest(1).upper()), "update-hash"),
    ],
)
def test_invalid_records_are_refused_and_nothing_is_written(tmp_path, args, key):
    ledger = _open(tmp_path)
    with pytest.raises(ConfigError, match=key):
        ledger.append(*args)
    assert ledger.path.read_bytes() == b""


def test_append_with_policy_refuses_a_round_past_the_budget(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    tight = SitePolicy(dataset_id=DATASET, epsilon_max=ledger.epsilon(), delta=DELTA)
    with pytest.raises(BudgetExceededError, match="not recorded"):
        ledger.append("run-a", 2, STEP, 1.0, _digest(2), policy=tight)
    assert len(_open(tmp_path).records()) == 1


def test_policy_for_another_dataset_or_delta_is_a_config_error(tmp_path):
    ledger = _open(tmp_path)
    for other in (
        SitePolicy(dataset_id="other", epsilon_max=1.0, delta=DELTA),
        SitePolicy(dataset_id=DATASET, epsilon_max=1.0, delta=1e-6),
        SitePolicy(dataset_id=DATASET, epsilon_max=1.0, delta=DELTA, accountant="prv"),
    ):
        with pytest.raises(ConfigError, match="does not match"):
            ledger.check_round(STEP, other)


def test_open_validates_its_arguments(tmp_path):
    with pytest.raises(ConfigError, match="dataset"):
        PrivacyLedger.open(tmp_path, "../x", delta=DELTA, accountant="rdp")
    with pytest.raises(ConfigError, match="delta"):
        PrivacyLedger.open(tmp_path, DATASET, delta=1.0, accountant="rdp")
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger.open(tmp_path, DATASET, delta=DELTA, accountant="gdp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no ledger"):
        PrivacyLedger.open(
            tmp_path, DATASET, delta=DELTA, accountant="rdp", create=False
        )


def test_datasets_have_separate_ledgers(tmp_path):
    _filled(tmp_path, rounds=2)
    other = PrivacyLedger.open(tmp_path, "claims", delta=DELTA, accountant="rdp")
    assert other.epsilon() == 0.0
    assert len(_open(tmp_path).records()) == 2


# --- tamper evidence: every change is an IntegrityError -------------------------


@pytest.mark.parametrize("index", [0, 1, 2])
def test_editing_any_record_is_detected(tmp_path, index):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    lines[index] = lines[index].replace(b'"steps":10', b'"steps":1')
    ledger.path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=f"record {index + 1}: hash mismatch"):
        _open(tmp_path)


@pytest.mark.parametrize(("index", "fragment"), [(0, "chain broken"), (2, "head")])
def test_editing_a_record_and_recomputing_its_hash_is_detected(
    tmp_path, index, fragment
):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    data = json.loads(lines[index])
    data["noise_multiplier"] = 5.0  # claim more noise, i.e. less epsilon
    body = {k: v for k, v in data.items() if k != "hash"}
    data["hash"] = _ledger_format.digest(body)
    lines[index] = _ledger_format.canonical(data) + b"\n"
    ledger.path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=fragment):
        verify_ledger(tmp_path, DATASET)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_deleting_any_record_is_detected_including_the_last(tmp_path, index):
    ledger = _filled(tmp_path)
    lines = _lines(ledger)
    del lines[index]
    ledger.path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError):
        verify_ledger(tmp_path, DATASET)


def test_deleting_every_record_is_detected(tmp_path):
    ledger = _filled(tmp_path)
    ledger.path.write_bytes(b"")
    with pytest.raises(IntegrityError, match="holds 0 records but its head file says"):
        verify_ledger(tmp_path, DATASET)


def test_reordering_records_is_detected(tmp_path):
    ledger = _filled(tmp_path)
    a, b, c = _lines(ledger)
    ledger.path.write_bytes(a + c + b)
    with pytest.raises(IntegrityError, match="record 2"):
        verify_ledger(tmp_path, DATASET)


def test_flipping_any_single_byte_is_detected(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    original = ledger.path.read_bytes()
    for position in range(len(original)):
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        ledger.path.write_bytes(bytes(tampered))
        with pytest.raises(IntegrityError):
            verify_ledger(tmp_path, DATASET)
    ledger.path.write_bytes(original)
    assert len(verify_ledger(tmp_path, DATASET)) == 1


def test_reformatting_a_record_is_detected(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    (line,) = _lines(ledger)
    ledger.path.write_bytes(json.dumps(json.loads(line), indent=1).encode() + b"\n")
    with pytest.raises(IntegrityError):
        verify_ledger(tmp_path, DATASET)


def test_a_missing_head_or_ledger_file_is_detected(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    head = _head(ledger).read_bytes()
    _head(ledger).unlink()
    with pytest.raises(IntegrityError, match="head file missing"):
        _open(tmp_path)  # create=True must not start a fresh ledger over the remains
    _head(ledger).write_bytes(head)
    ledger.path.unlink()
    with pytest.raises(IntegrityError, match="ledger file missing"):
        _open(tmp_path)


def test_an_edited_head_is_detected(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    head = json.loads(_head(ledger).read_bytes())
    head["count"] = 1
    _head(ledger).write_text(json.dumps(head))
    with pytest.raises(IntegrityError, match="HMAC mismatch"):
        verify_ledger(tmp_path, DATASET)
    # rewritten with the site key (its owner): the chain still disagrees
    _ledger_files.write_head(ledger._paths, 0, _ledger_format.genesis(DATASET))
    with pytest.raises(IntegrityError, match="head file says 0"):
        verify_ledger(tmp_path, DATASET)


def test_a_tampered_ledger_blocks_appends_after_it_was_opened(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    lines = _lines(ledger)
    ledger.path.write_bytes(lines[0])
    with pytest.raises(IntegrityError):
        ledger.append("run-a", 3, STEP, 1.0, _digest(3))
    with pytest.raises(IntegrityError):
        ledger.verify()
    assert ledger.path.read_bytes() == lines[0]


def test_verify_reports_records_changed_since_opening(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    ledger.path.write_bytes(b"")  # a careful rewrite: empty file, matching head
    _ledger_files.write_head(ledger._paths, 0, _ledger_format.genesis(DATASET))
    assert verify_ledger(tmp_path, DATASET) == []
    with pytest.raises(IntegrityError, match="changed since opened"):
        ledger.verify()  # but this object saw one record, now gone


# --- crashes ----------------------------------------------------------------------


def test_a_crash_before_the_head_update_keeps_the_record(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    head_after_one = _head(ledger).read_bytes()
    ledger.append("run-a", 2, STEP, 1.0, _digest(2))
    _head(ledger).write_bytes(head_after_one)  # as if the process died here
    reopened = _open(tmp_path)
    assert len(reopened.records()) == 2  # counted: the safe side
    reopened.append("run-a", 3, STEP, 1.0, _digest(3))
    assert json.loads(_head(ledger).read_bytes())["count"] == 3


def test_a_torn_last_line_blocks_training_until_repaired(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    complete = ledger.path.read_bytes()
    ledger.path.write_bytes(complete + b'{"accountant":"rdp","data')
    with pytest.raises(IntegrityError, match="last line is incomplete"):
        _open(tmp_path)
    assert repair_torn_tail(tmp_path, DATASET) is True
    assert ledger.path.read_bytes() == complete
    assert len(_open(tmp_path).records()) == 2
    assert repair_torn_tail(tmp_path, DATASET) is False


def test_repair_refuses_when_more_than_the_tail_is_wrong(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    first, _second = _lines(ledger)
    torn = first + b'{"accountant"'
    ledger.path.write_bytes(torn)
    with pytest.raises(IntegrityError):
        repair_torn_tail(tmp_path, DATASET)  # a complete record is missing too
    assert ledger.path.read_bytes() == torn


# --- the CLI ----------------------------------------------------------------------

runner = CliRunner()


def _cli(*args):
    return runner.invoke(ledger_app, [str(a) for a in args])


def test_cli_verify_ok(tmp_path):
    _filled(tmp_path, rounds=2)
    result = _cli("verify", "--state", tmp_path, "--dataset", DATASET)
    assert result.exit_code == 0
    assert "intact (2 records)" in result.stdout


def test_cli_verify_tampered_exits_2_with_one_line(tmp_path):
    ledger = _filled(tmp_path, rounds=3)
    lines = _lines(ledger)
    ledger.path.write_bytes(b"".join(lines[:2]))
    result = _cli("verify", "--state", tmp_path, "--dataset", DATASET)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "failed verification" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_verify_without_a_ledger_exits_2(tmp_path):
    result = _cli("verify", "--state", tmp_path, "--dataset", "nope")
    assert result.exit_code == 2
    assert "no ledger for dataset 'nope'" in result.stderr


def test_cli_show_json_reports_history_and_remaining_budget(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    policy = tmp_path / "site.toml"
    policy.write_text(
        f'[privacy]\ndataset-id = "{DATASET}"\nepsilon-max = 10.0\ndelta = {DELTA}\n'
    )
    result = _cli("show", "--state", tmp_path, "--policy", policy, "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rounds"] == 2
    assert summary["epsilon_lifetime"] == ledger.epsilon()
    assert summary["epsilon_remaining"] == pytest.approx(10.0 - ledger.epsilon())
    assert [r["hash"] for r in summary["records"]] == [r.hash for r in ledger.records()]


def test_cli_show_table_without_policy(tmp_path):
    ledger = _filled(tmp_path, rounds=2)
    result = _cli("show", "--state", tmp_path, "--dataset", DATASET)
    assert result.exit_code == 0, result.output
    assert "run-a" in result.stdout
    assert f"{ledger.epsilon():.4f}" in result.stdout
    assert "remaining budget: pass --policy" in result.stdout


def test_cli_show_needs_a_dataset(tmp_path):
    result = _cli("show", "--state", tmp_path)
    assert result.exit_code == 2
    assert "give --dataset" in result.stderr


def test_cli_repair_drops_a_torn_tail(tmp_path):
    ledger = _filled(tmp_path, rounds=1)
    ledger.path.write_bytes(ledger.path.read_bytes() + b'{"acc')
    result = _cli("repair", "--state", tmp_path, "--dataset", DATASET)
    assert result.exit_code == 0
    assert "dropped an incomplete last line" in result.stdout
    assert len(verify_ledger(tmp_path, DATASET)) == 1
