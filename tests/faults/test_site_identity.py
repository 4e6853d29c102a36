"""Issue 12, case 1, end to end: a hospital whose site code is written with leading
zeros keeps one ledger across runs on different files, and another spelling of it
is refused before Flower starts (two ledgers would spend its budget twice)."""

import numpy as np
import pandas as pd
import pytest

from fedvault.client.ledger import verify_ledger
from fedvault.common.errors import ConfigError
from fedvault.server import simulate as sim
from fedvault.server.site_names import folder_name

pytestmark = pytest.mark.slow


def _csv(path, codes, seed):
    rng = np.random.default_rng(seed)
    n = 40 * len(codes)
    x = rng.normal(size=n)
    frame = pd.DataFrame(
        {"site_code": np.repeat(codes, 40), "x": x, "y": (x > 0).astype(int)}
    )
    path.write_text(frame.to_csv(index=False))
    return str(path)


def _run(tmp_path, name, data, state, **values):
    settings = {"data": data, "target": "y", "partition": "column:site_code"}
    settings |= {"state": str(state), "rounds": 1, "timeout": 600.0, "seed": 1}
    return sim.run(sim.load_config(settings | values), tmp_path / name)


def test_one_ledger_per_hospital_across_files_and_spellings(tmp_path):
    state = tmp_path / "state"
    jan = _csv(tmp_path / "jan.csv", ["007", "012", "120"], seed=1)
    first = _run(tmp_path, "jan", jan, state, epsilon=2.0, **{"site-budget": 4.0})
    assert sorted(first["sites"]) == [
        "site_code=007",
        "site_code=012",
        "site_code=120",
    ]
    # A new site A15 appears: the column is text now, 007 is still 007.
    feb = _csv(tmp_path / "feb.csv", ["007", "012", "A15"], seed=2)
    second = _run(tmp_path, "feb", feb, state, epsilon=1.5)
    assert sorted(second["sites"]) == [
        "site_code=007",
        "site_code=012",
        "site_code=A15",
    ]
    folders = sorted(p.name for p in state.iterdir() if p.is_dir())
    named = {*first["sites"], *second["sites"]}  # 4 sites, 007 in both runs
    assert folders == sorted(folder_name(n) for n in named) and len(folders) == 4
    ledger = verify_ledger(state / "site_code_007", "jan")
    # both runs on one ledger: each released its file's summary (one per dataset
    # version) into the same ledger, beside the training rounds
    summaries = {r.run_id for r in ledger if r.run_id.startswith("summary:")}
    trained = {r.run_id for r in ledger} - summaries
    assert len(summaries) == 2 and trained
    lifetime = second["sites"]["site_code=007"]["epsilon_lifetime"]
    assert lifetime == pytest.approx(ledger[-1].epsilon)
    assert first["sites"]["site_code=007"]["epsilon_lifetime"] < lifetime <= 4.0

    # The same hospitals written without the zeros: refused, nothing written.
    plain = _csv(tmp_path / "mar.csv", ["7", "12"], seed=3)
    with pytest.raises(ConfigError, match="under another spelling"):
        _run(tmp_path, "mar", plain, state, epsilon=1.0)
    assert not (tmp_path / "mar").exists()
    assert sorted(p.name for p in state.iterdir() if p.is_dir()) == folders
