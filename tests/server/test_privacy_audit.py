"""The one-run audit's bound (Steinke, Nasr & Jagielski 2023) against known values
and an independent transcription, its canary game, and bad input to
`fedvault privacy audit` (one line, exit 2, nothing run)."""

import math
import sys

import numpy as np
import pytest

from fedvault.common.cli import main
from fedvault.common.data import DEFAULT_TARGET, default_dataset
from fedvault.common.errors import ConfigError
from fedvault.server.audit_bound import (
    epsilon_lower_bound,
    p_value,
    perfect_guessing_bound,
)
from fedvault.server.privacy_audit import (
    count_correct,
    draw_canaries,
    site_canaries,
)


def _pmf(k: int, r: int, q: float) -> float:
    return math.comb(r, k) * q**k * (1 - q) ** (r - k)


def _reference_p_value(m, r, v, eps, delta):
    """The paper's p-value, written out with plain sums (no scipy, no numpy)."""
    q = 1 / (1 + math.exp(-eps))
    beta = sum(_pmf(k, r, q) for k in range(v, r + 1))
    alpha, below = 0.0, 0.0
    for i in range(1, v + 1):
        below += _pmf(v - i, r, q)
        alpha = max(alpha, below / i)
    return min(1.0, beta + alpha * delta * 2 * m)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (100, 100, 100, 3.0, 0.0),
        (1000, 100, 80, 1.0, 1e-5),
        (1000, 100, 80, 1.0, 1e-3),
        (200, 40, 37, 1.5, 1e-5),
        (200, 40, 20, 0.0, 1e-5),
        (50, 10, 0, 2.0, 1e-2),
        (500, 250, 200, 0.7, 1e-4),
    ],
)
def test_p_value_matches_an_independent_transcription(m, r, v, eps, delta):
    assert p_value(
        canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta
    ) == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("r", [10, 40, 100, 1000])
def test_perfect_guessing_reaches_the_log_odds_of_the_paper(r):
    """r right guesses out of r at delta = 0: (e^eps / (1 + e^eps))^r = 0.05."""
    bound = epsilon_lower_bound(canaries=r, guesses=r, correct=r, delta=0.0)
    t = 0.05 ** (1 / r)
    assert bound == pytest.approx(math.log(t / (1 - t)), abs=1e-6)
    assert bound == pytest.approx(perfect_guessing_bound(r), abs=1e-6)


def test_known_values():
    assert perfect_guessing_bound(100) == pytest.approx(3.4930, abs=1e-4)
    # 40 of 40 at delta = 1e-5 with 200 canaries: a little under delta = 0's 2.554
    at_delta = epsilon_lower_bound(canaries=200, guesses=40, correct=40, delta=1e-5)
    assert (
        2.5 < at_delta < perfect_guessing_bound(40) == pytest.approx(2.5540, abs=1e-4)
    )


@pytest.mark.parametrize("r", [20, 100, 1000])
def test_chance_guessing_shows_nothing(r):
    assert epsilon_lower_bound(canaries=r, guesses=r, correct=r // 2, delta=1e-5) == 0
    assert epsilon_lower_bound(canaries=r, guesses=r, correct=0, delta=0) == 0


def test_the_bound_grows_with_right_guesses_and_shrinks_with_delta():
    bounds = [
        epsilon_lower_bound(canaries=1000, guesses=200, correct=v, delta=1e-5)
        for v in (120, 140, 160, 180, 200)
    ]
    assert bounds == sorted(bounds) and bounds[0] > 0
    by_delta = [
        epsilon_lower_bound(canaries=1000, guesses=200, correct=180, delta=d)
        for d in (0.0, 1e-6, 1e-4, 1e-3)
    ]
    assert by_delta == sorted(by_delta, reverse=True)


def test_randomized_response_is_never_over_reported():
    """An eps-DP guesser (randomized response, eps = 1) is right with probability
    e / (1 + e); the 95 % bound stays below 1 in at least 90 % of audits."""
    rng = np.random.default_rng(7)
    q = math.e / (1 + math.e)
    r = 500
    hits = rng.binomial(r, q, size=200)
    bounds = [
        epsilon_lower_bound(canaries=r, guesses=r, correct=int(v), delta=0)
        for v in hits
    ]
    assert np.mean(np.array(bounds) <= 1.0) >= 0.9
    assert np.median(bounds) > 0.6  # and it is not vacuous


@pytest.mark.parametrize(
    "counts",
    [
        {"canaries": 10, "guesses": 11, "correct": 5},
        {"canaries": 10, "guesses": 5, "correct": 6},
        {"canaries": 10, "guesses": 5, "correct": -1},
    ],
)
def test_counts_out_of_order_are_refused(counts):
    with pytest.raises(ConfigError, match="audit counts"):
        epsilon_lower_bound(**counts, delta=1e-5)


def test_a_bad_delta_or_confidence_is_refused():
    with pytest.raises(ConfigError, match="delta"):
        epsilon_lower_bound(canaries=10, guesses=10, correct=10, delta=2)
    with pytest.raises(ConfigError, match="confidence"):
        epsilon_lower_bound(canaries=10, guesses=10, correct=10, delta=0, confidence=1)


def test_canaries_are_drawn_from_the_columns_ranges_with_fair_coins():
    frame = default_dataset()
    game = draw_canaries(frame, DEFAULT_TARGET, count=400, sites=3, seed=1)
    assert list(game.rows.columns) == list(frame.columns)
    numeric = frame.drop(columns=DEFAULT_TARGET)
    rows = game.rows[numeric.columns]
    assert (rows >= numeric.min()).all().all() and (rows <= numeric.max()).all().all()
    assert set(game.rows[DEFAULT_TARGET]) == {0, 1}
    assert 150 < game.included.sum() < 250
    again = draw_canaries(frame, DEFAULT_TARGET, count=400, sites=3, seed=1)
    assert again.rows.equals(game.rows) and (again.included == game.included).all()
    held = site_canaries(game, ["a", "b", "c"])
    assert sum(len(rows) for rows in held.values()) == game.included.sum()
    assert len(held["b"]) == (game.included & (game.site == 1)).sum()


def test_guesses_take_the_lowest_losses_in_and_the_highest_out():
    losses = np.array([0.1, 5.0, 0.2, 3.0, 0.3, 4.0])
    included = np.array([True, False, False, True, True, False])
    # in: 0.1 (yes), 0.2 (no); out: 5.0 (right), 4.0 (right), 3.0 (wrong)
    assert count_correct(losses, included, guess_in=2, guess_out=3) == 3
    assert count_correct(losses, included, guess_in=0, guess_out=2) == 2
    assert count_correct(losses, included, guess_in=1, guess_out=0) == 1


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedvault", "privacy", "audit", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--canaries", "0"], "canaries"),
        (["--guess-out", "300"], "more than --canaries"),
        (["--guess-in", "0", "--guess-out", "0"], "not both 0"),
        (["--guess-in", "-1"], "guess-in"),
        (["--sites", "1"], "sites"),
        (["--sites", "1000"], "1000 sites"),
        (["--epsilon", "0"], "epsilon"),
        (["--epsilon", "3", "--epsilon", "3"], "given twice"),
        (["--confidence", "1"], "confidence"),
        (["--rounds", "0"], "rounds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, needle):
    code, err = _run(monkeypatch, capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_in_use_is_refused_before_any_run(monkeypatch, capsys, tmp_path):
    (tmp_path / "no-dp").mkdir()
    (tmp_path / "no-dp" / "mine.txt").write_text("keep me")
    code, err = _run(monkeypatch, capsys, "--out", str(tmp_path))
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dp-eps3").exists()
    assert (tmp_path / "no-dp" / "mine.txt").read_text() == "keep me"


def test_canaries_join_the_training_rows_after_the_sites_own_split(tmp_path):
    """The simulation hook: a site's split of its own rows is the same with and
    without canaries, and every canary is a training row (never validation)."""
    from fedvault.client.site import load_site_data, site_settings
    from fedvault.common.protocol import simulated_site_key

    frame = default_dataset().iloc[:100]
    data = tmp_path / "site.parquet"
    frame.to_parquet(data, index=False)
    game = draw_canaries(frame, DEFAULT_TARGET, count=10, sites=1, seed=3)
    canaries = tmp_path / "canaries.parquet"
    game.rows.to_parquet(canaries, index=False)
    node = {"partition-id": 0}
    plain = {simulated_site_key(0, "data"): str(data)}
    with_canaries = plain | {simulated_site_key(0, "canaries"): str(canaries)}
    before = load_site_data(site_settings(node, plain), target=DEFAULT_TARGET)
    after = load_site_data(site_settings(node, with_canaries), target=DEFAULT_TARGET)
    assert after.validation.equals(before.validation)
    assert len(after.train) == len(before.train) + 10
    assert after.train.iloc[: len(before.train)].equals(before.train)
    assert (
        after.train.iloc[len(before.train) :].reset_index(drop=True).equals(game.rows)
    )


def test_a_deployed_site_takes_no_canaries(tmp_path):
    from fedvault.client.site import site_settings

    node = {"data": str(tmp_path / "x.csv"), "canaries": str(tmp_path / "c.csv")}
    assert site_settings(node, {}).canaries is None
