"""Site identity under `fedvault simulate --state` (issue 12, case 1): a site's
name is its raw text, stable across runs and files, and another spelling of a site
that has a ledger is refused, never given a second ledger."""

import sys

import pandas as pd
import pytest

from fedvault.common.cli import main
from fedvault.common.errors import ConfigError
from fedvault.server import simulate as sim
from fedvault.server.site_names import NAME_FILE, state_folders


def _csv(path, codes, n_each=30):
    rows = [
        {"site_code": code, "x": float(i), "y": i % 2}
        for code in codes
        for i in range(n_each)
    ]
    path.write_text(pd.DataFrame(rows).to_csv(index=False))
    return path


def _prepare(data, state):
    cfg = sim.load_config(
        {
            "data": str(data),
            "target": "y",
            "partition": "column:site_code",
            "state": str(state),
        }
    )
    return sim.prepare_data(cfg)


def test_leading_zeros_give_one_ledger_across_files(tmp_path):
    """File 1 holds 007, 012, 120 (all codes); file 2 adds A15. The same hospital
    reaches the same state folder in both."""
    state = tmp_path / "state"
    first = _prepare(_csv(tmp_path / "jan.csv", ["007", "012", "120"]), state)
    assert [n for n, _ in first.sites] == [
        "site_code=007",
        "site_code=012",
        "site_code=120",
    ]
    sim.site_states(first, state)
    second = _prepare(_csv(tmp_path / "feb.csv", ["007", "012", "A15"]), state)
    sim.check_states(second, state)
    sim.site_states(second, state)
    folders = sorted(p.name for p in state.iterdir())
    assert folders == [
        "site_code_007",
        "site_code_012",
        "site_code_120",
        "site_code_A15",
    ]
    assert (state / "site_code_007" / NAME_FILE).read_text() == "site_code=007\n"


def test_codes_among_plain_numbers_keep_their_text(tmp_path):
    """A site column read as raw text: `7.0` and `+7` are their own names, not 7."""
    frame = sim.prepare_data(
        sim.load_config(
            {
                "data": str(_csv(tmp_path / "a.csv", ["7", "12.0", "120"])),
                "target": "y",
                "partition": "column:site_code",
            }
        )
    )
    assert sorted(n for n, _ in frame.sites) == [
        "site_code=12.0",
        "site_code=120",
        "site_code=7",
    ]


@pytest.mark.parametrize(
    ("before", "now"),
    [
        ("site_code=007", "site_code=7"),
        ("site_code=7", "site_code=007"),
        ("Hospital A", "hospital a"),
        ("Hospital A", "Hospital  A"),
        ("Zürich", "Zärich"),  # one folder, two sites
    ],
)
def test_another_spelling_of_a_ledger_is_refused(tmp_path, before, now):
    (folder,) = state_folders([before], tmp_path)
    folder.mkdir()
    (folder / NAME_FILE).write_text(before + "\n")
    with pytest.raises(ConfigError, match="under another spelling") as exc:
        state_folders([now], tmp_path)
    assert repr(before) in str(exc.value) and repr(now) in str(exc.value)
    assert state_folders([before], tmp_path) == [folder]


def test_a_folder_from_before_names_were_recorded(tmp_path):
    (tmp_path / "site_code_007").mkdir()
    assert state_folders(["site_code=007"], tmp_path) == [tmp_path / "site_code_007"]
    with pytest.raises(ConfigError, match="'site_code_007'"):
        state_folders(["site_code=7"], tmp_path)


def test_two_spellings_in_one_run_are_refused():
    with pytest.raises(ConfigError, match="one site written two ways"):
        state_folders(["site_code=007", "site_code=7"], None)


def test_the_refusal_is_one_line_exit_2_before_anything_is_written(
    monkeypatch, capsys, tmp_path
):
    state = tmp_path / "state"
    sim.site_states(_prepare(_csv(tmp_path / "a.csv", ["007", "012"]), state), state)
    before = sorted(p.relative_to(state) for p in state.rglob("*"))
    data = _csv(tmp_path / "b.csv", ["7", "12"])
    out = tmp_path / "run"
    argv = ["fedvault", "simulate", "--data", str(data), "--target", "y"]
    argv += ["--partition", "column:site_code", "--state", str(state)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "'site_code=12' would use the ledger of site 'site_code=012'" in err
    assert not out.exists()
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before
