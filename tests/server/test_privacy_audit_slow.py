"""`fedvault privacy audit`, as shipped, separates DP from non-DP: two real
simulated federations (the same canaries, one with DP-SGD at epsilon 3, one with
--no-dp), scored by their released models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

NO_DP_THRESHOLD = 1.0  # measured 1.7-2.6 on the default canaries and seeds


@pytest.mark.slow
def test_the_default_audit_separates_dp_from_no_dp(tmp_path):
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "fedvault"),
            *("privacy", "audit", "--format", "json"),
            *("--out", str(tmp_path / "runs")),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    audits = {a["configuration"]: a for a in json.loads(done.stdout)["audits"]}
    assert set(audits) == {"dp-eps3", "no-dp"}
    dp, no_dp = audits["dp-eps3"], audits["no-dp"]
    assert 2.9 < dp["accountant_epsilon"] <= 3.0
    assert dp["empirical_epsilon"] <= dp["accountant_epsilon"]
    assert no_dp["accountant_epsilon"] is None
    assert no_dp["empirical_epsilon"] > NO_DP_THRESHOLD
    assert no_dp["empirical_epsilon"] > dp["empirical_epsilon"] + NO_DP_THRESHOLD
    for audit in audits.values():
        assert audit["canaries"] == 200 and audit["guesses"] == 40
        assert audit["delta"] == 1e-5
    # the runs are kept under --out, each a complete run folder
    for name in audits:
        assert (tmp_path / "runs" / name / "summary.json").is_file()
