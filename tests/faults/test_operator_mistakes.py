"""An operator's typing mistakes (issue 14, case 12): a large delta is warned
about when the site starts, and paths that cannot be used are named in one line."""

from __future__ import annotations

import hashlib
import logging

from consortium import run_fedvault

from fedvault.client.ledger import PrivacyLedger
from fedvault.client.policy import load_policy
from fedvault.common.privacy import Step

POLICY = '[privacy]\ndataset-id = "bc"\nepsilon-max = 10.0\ndelta = {delta}\n'


def test_a_large_delta_is_warned_about_when_the_site_starts(tmp_path, caplog):
    path = tmp_path / "site.toml"
    path.write_text(POLICY.format(delta=0.5))
    with caplog.at_level(logging.WARNING, logger="fedvault.client.policy"):
        assert load_policy(path, warn=True).delta == 0.5
    assert f"{path} [privacy]: delta = 0.5 is large" in caplog.text
    caplog.clear()
    path.write_text(POLICY.format(delta=1e-5))
    with caplog.at_level(logging.WARNING, logger="fedvault.client.policy"):
        load_policy(path, warn=True)
    assert caplog.text == ""


def test_unusable_state_and_output_paths_are_named(monkeypatch, capsys, tmp_path):
    for command in ("show", "verify", "repair", "anchor"):
        code, out = run_fedvault(
            monkeypatch,
            capsys,
            *("client", "ledger", command, "--state", "/proc/nope"),
            *("--dataset", "bc"),
        )
        assert code == 2 and "/proc/nope" in out and "Traceback" not in out
    ledger = PrivacyLedger.open(tmp_path, "bc", delta=1e-5, accountant="rdp")
    step = Step(noise_multiplier=1.0, sample_rate=0.1, steps=2)
    ledger.append("run", 1, step, 1.0, hashlib.sha256(b"u").hexdigest())
    code, out = run_fedvault(
        monkeypatch,
        capsys,
        *("client", "ledger", "anchor", "--state", str(tmp_path), "--dataset", "bc"),
        *("--output", "/proc/nope/bc.anchor.json"),
    )
    assert code == 2 and "/proc/nope" in out and "Traceback" not in out
