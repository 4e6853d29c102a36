"""Every measured figure README.md and docs/ quote comes from a command printed next
to it, and fails a test when it drifts (issue 13, item 2).

Benchmark figures: docs/benchmarks.md is exactly what ``benchmarks/report.py``
renders from ``benchmarks/results.json`` (written by ``python -m benchmarks``), and
every benchmark figure quoted elsewhere equals that file's value at the printed
rounding. Figures of other runs: each is listed here with its command, which the
doc prints in the same paragraph; the cheap ones are recomputed (fast) or rerun
(slow, marked so)."""

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = json.loads((ROOT / "benchmarks" / "results.json").read_text())
B = RESULTS["benchmarks"]


def _flat(name: str) -> str:
    """A doc's text with its line breaks and runs of spaces as single spaces."""
    return " ".join((ROOT / name).read_text(encoding="utf-8").split())


def _report_module() -> Any:
    # Opacus ships a top-level package also named `benchmarks` (as test_benchmarks)
    sys.path.insert(0, str(ROOT))
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "benchmarks"}
    for key in saved:
        sys.modules.pop(key)
    try:
        return importlib.import_module("benchmarks.report")
    finally:
        sys.path.remove(str(ROOT))


def test_benchmarks_md_is_rendered_from_results_json(tmp_path, monkeypatch):
    """A figure edited by hand in docs/benchmarks.md, or a results.json whose doc
    was not regenerated, fails here."""
    report = _report_module()
    monkeypatch.setattr(report, "DOC", tmp_path / "benchmarks.md")
    monkeypatch.setattr(report, "_plot", lambda _b: None)  # the PNG is not compared
    report.write(RESULTS)
    rendered = (tmp_path / "benchmarks.md").read_text()
    assert rendered == (ROOT / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md differs from benchmarks/results.json rendered by "
        "benchmarks/report.py: regenerate it (python -m benchmarks writes both)"
    )


def _b1(model: str, mode: str) -> float:
    return float(B["B1"]["models"][model]["modes"][mode]["ratio"])


def _b2(case: str, key: str) -> float:
    got = B["B2"]["cases"][case]
    return float(got["simulation"][key] if key == "startup_seconds" else got[key])


def _b2_startups() -> list[float]:
    return [_b2(case, "startup_seconds") for case in B["B2"]["cases"]]


def _b4(sites: int, key: str) -> float:
    point = next(p for p in B["B4"]["points"] if p["sites"] == sites)
    return float(point[key])


def _b6(sites: int) -> float:
    return float(next(p["ratio"] for p in B["B6"]["points"] if p["sites"] == sites))


def _b8(case: str, key: str) -> float:
    got = B["B8"][case]
    return float(got["round_seconds"][0] if key == "first" else got[key])


def _b11(case: str) -> dict[str, Any]:
    return dict(B["B11"]["digits"]["cases"][case])


def _b11_r2(case: str) -> float:
    return float(B["B11"]["regression"]["cases"][case]["r2"])


def _b3_share_round() -> float:
    """B2's mean simulated round (rounds 2+, DP, embedded data), in seconds."""
    sim = B["B2"]["cases"]["dp"]["simulation"]
    return float(sim["later_rounds_seconds"]) / max(B["B2"]["rounds"] - 1, 1)


def _b3_share() -> float:
    return 100 * float(B["B3"]["per_round_seconds"]) / _b3_share_round()


def _b11_r2(case: str) -> float:
    return float(B["B11"]["regression"]["cases"][case]["r2"])


# (doc, the text as printed with {} where the figures go, each figure's value in
# results.json and its printed format). The text is matched with whitespace folded.
Figure = tuple[str, str, list[tuple[Callable[[], float], str]]]
BENCHMARK_FIGURES: list[Figure] = [
    (
        "README.md",
        "private / non-private epoch time **{}x** (MLP 30-128-1) and **{}x** "
        "(MLP 30-512-1) with fedvault's book-keeping DP-SGD step",
        [
            (lambda: _b1("mlp-128", "fedvault"), ".2f"),
            (lambda: _b1("mlp-512", "fedvault"), ".2f"),
        ],
    ),
    (
        "README.md",
        "Opacus' fastest correct mode was {}x / {}x. The `cnn` takes fedvault's "
        "layer-wise step (same check): **{}x**, against Opacus' best {}x (B1)",
        [
            (lambda: _b1("mlp-128", "ew"), ".2f"),
            (lambda: _b1("mlp-512", "ew"), ".2f"),
            (lambda: _b1("cnn", "fedvault"), ".2f"),
            (lambda: _b1("cnn", "ew"), ".2f"),
        ],
    ),
    (
        "README.md",
        "doing the same training: {}x on the tiny embedded data",
        [(lambda: _b2("dp", "ratio_steady_rounds"), ".0f")],
    ),
    (
        "README.md",
        "{}x with ~{} rows a site",
        [
            (lambda: _b2("dp-large", "ratio_steady_rounds"), ".2f"),
            (lambda: B["B2"]["large_rows"] * 0.8 / B["B2"]["sites"], ",.0f"),
        ],
    ),
    (
        "README.md",
        "(Flower's ~{} s per round against milliseconds of training)",
        [(lambda: _b3_share_round(), ".1f")],
    ),
    (
        "README.md",
        "Start-up (SuperLink, Ray, imports, preprocessing) ~{}-{} s on its own",
        [(lambda: min(_b2_startups()), ".0f"), (lambda: max(_b2_startups()), ".0f")],
    ),
    (
        "README.md",
        "**Privacy bookkeeping**: {}% of a federated round",
        [(_b3_share, ".1f")],
    ),
    (
        "README.md",
        "1,000 sites with 10 sampled a round: {} s a round ({} s at 10 sites), {} s "
        "start-up, +{} GB memory",
        [
            (lambda: _b4(1000, "later_round_seconds"), ".2f"),
            (lambda: _b4(10, "later_round_seconds"), ".2f"),
            (lambda: _b4(1000, "startup_seconds"), ".0f"),
            (lambda: _b4(1000, "peak_memory_above_idle_mb") / 1024, ".1f"),
        ],
    ),
    (
        "README.md",
        "a site's train reply is {}x its fp32 model (MLP 30-128-1)",
        [(lambda: B["B5"]["points"][0]["ratio"], ".3f")],
    ),
    (
        "README.md",
        "aggregation) {}x (MLP 30-128-1) and {}x (MLP 30-512-1)",
        [
            (lambda: B["B5"]["points"][0]["int8_ratio"], ".3f"),
            (lambda: B["B5"]["points"][1]["int8_ratio"], ".3f"),
        ],
    ),
    (
        "README.md",
        "SecAgg+ rounds take {}x (5 sites), {}x (10) and {}x (20 sites)",
        [(lambda: _b6(5), ".2f"), (lambda: _b6(10), ".2f"), (lambda: _b6(20), ".2f")],
    ),
    (
        "README.md",
        "`--secagg` takes {}\u00d7 the round time in the benchmark runner's B6 (5 "
        "sites, rounds 2\u20135, `python -m benchmarks --only B6`)",
        [(lambda: _b6(5), ".2f")],
    ),
    (
        "docs/privacy.md",
        "in simulation a SecAgg+ round took {}x one in the clear at 5 sites (B6 of "
        "`python -m benchmarks --only B6`",
        [(lambda: _b6(5), ".2f")],
    ),
    (
        "README.md",
        "30 columns runs at {}x `pandas.read_csv` throughput",
        [(lambda: B["B7"]["import / pandas throughput"], ".3f")],
    ),
    (
        "README.md",
        "reading the vault back at {}x raw AES-GCM throughput",
        [(lambda: B["B7"]["read / raw AES-GCM throughput"], ".3f")],
    ),
    (
        "README.md",
        "3 sites over TLS in real processes, {} s a round against {} s simulated "
        "({}x rounds 2+, {}x all rounds; goal 2x: missed); with Flower's own "
        "per-message interpreter {} s ({}x)",
        [
            (lambda: _b8("fork", "later_round_mean"), ".1f"),
            (lambda: _b8("simulation", "later_round_mean"), ".2f"),
            (lambda: _b8("fork", "ratio_later_rounds"), ".1f"),
            (lambda: _b8("fork", "ratio_all_rounds"), ".1f"),
            (lambda: _b8("subprocess", "later_round_mean"), ".0f"),
            (lambda: _b8("subprocess", "ratio_later_rounds"), ".0f"),
        ],
    ),
    (
        "README.md",
        "**{} s a round** in deployment against {} s in simulation ({}x; {}x counting "
        "the simulation's slower first round), and {} s a round with SecAgg+",
        [
            (lambda: _b8("fork", "later_round_mean"), ".1f"),
            (lambda: _b8("simulation", "later_round_mean"), ".2f"),
            (lambda: _b8("fork", "ratio_later_rounds"), ".1f"),
            (lambda: _b8("fork", "ratio_all_rounds"), ".1f"),
            (lambda: _b8("fork-secagg", "later_round_mean"), ".1f"),
        ],
    ),
    (
        "README.md",
        "checks the file against PyTorch before writing it (here: max difference "
        "{} ≤ 1e-5)",
        [(lambda: B["B9"]["export"]["onnx_max_abs_diff"], ".1e")],
    ),
    (
        "README.md",
        "gave {}x the saved size ({}x gzipped) for {} points of accuracy",
        [
            (lambda: B["B9"]["compress"]["size_ratio"], ".2f"),
            (lambda: B["B9"]["compress"]["gzipped_ratio"], ".2f"),
            (lambda: B["B9"]["compress"]["accuracy_delta_points"], ".1f"),
        ],
    ),
    (
        "docs/deploy.md",
        '| deployment, `isolation = "fork"` (default) | {} s | {} s |',
        [
            (lambda: _b8("fork", "first"), ".1f"),
            (lambda: _b8("fork", "later_round_mean"), ".1f"),
        ],
    ),
    (
        "docs/deploy.md",
        '| deployment, `isolation = "subprocess"` (Flower\'s launcher) | {} s | {} s |',
        [
            (lambda: _b8("subprocess", "first"), ".1f"),
            (lambda: _b8("subprocess", "later_round_mean"), ".1f"),
        ],
    ),
    (
        "docs/deploy.md",
        "| deployment, default, with SecAgg+ | {} s | {} s |",
        [
            (lambda: _b8("fork-secagg", "first"), ".1f"),
            (lambda: _b8("fork-secagg", "later_round_mean"), ".1f"),
        ],
    ),
    (
        "docs/deploy.md",
        "| `fedvault simulate --sites 3` | {} s | {} s |",
        [
            (lambda: _b8("simulation", "first"), ".1f"),
            (lambda: _b8("simulation", "later_round_mean"), ".2f"),
        ],
    ),
    (
        "README.md",
        "the digits CNN reaches {} at \u03b5 = 3 in `fedvault simulate` (goal 0.80) "
        "and {} without DP (B11)",
        [
            (lambda: _b11("dp-eps-3")["accuracy"], ".2f"),
            (lambda: _b11("no-dp")["accuracy"], ".3f"),
        ],
    ),
    (
        "docs/privacy.md",
        "`python -m benchmarks --only B8`) a SecAgg+ round took {} s against {} s in "
        "the clear ({}x)",
        [
            (lambda: _b8("fork-secagg", "later_round_mean"), ".1f"),
            (lambda: _b8("fork", "later_round_mean"), ".1f"),
            (
                lambda: (
                    _b8("fork-secagg", "later_round_mean")
                    / _b8("fork", "later_round_mean")
                ),
                ".1f",
            ),
        ],
    ),
    (
        "docs/report.md",
        "On a 50-site, 30-round simulation (10 sites sampled a round): {} s and {} MB "
        "(`python -m benchmarks --only B9`",
        [
            (lambda: B["B9"]["report"]["seconds"], ".2f"),
            (lambda: B["B9"]["report"]["megabytes"], ".2f"),
        ],
    ),
    (
        "docs/models.md",
        "`python -m benchmarks --only B11` (docs/benchmarks.md, B11), 5 sites, IID, on "
        "this 2-core machine shared with other engineers' jobs: `fedvault simulate "
        "--dataset digits --model cnn` with its defaults reaches test accuracy {} with "
        "`--no-dp` ({} s) and {} at epsilon 3 (spent {}, sigma {}; {} s)",
        [
            (lambda: _b11("no-dp")["accuracy"], ".3f"),
            (lambda: _b11("no-dp")["seconds"], ".0f"),
            (lambda: _b11("dp-eps-3")["accuracy"], ".3f"),
            (lambda: _b11("dp-eps-3")["epsilon_spent_max"], ".3f"),
            (lambda: _b11("dp-eps-3")["noise_multiplier"], ".2f"),
            (lambda: _b11("dp-eps-3")["seconds"], ".0f"),
        ],
    ),
    (
        "README.md",
        "regression on breast-cancer `mean area` reaches R\u00b2 {} without DP and {} "
        "at \u03b5 = 3 (goal: within 0.05 of a central linear model's {}: met "
        "both ways; B11)",
        [
            (lambda: _b11_r2("no-dp"), ".2f"),
            (lambda: _b11_r2("dp-eps-3"), ".2f"),
            (lambda: B["B11"]["regression"]["central_linear_r2"], ".3f"),
        ],
    ),
    (
        "docs/models.md",
        "5 sites): R2 {} with `--no-dp` (lr 0.05), {} at epsilon 3 (lr 0.1, 10 rounds) "
        "and {} with 20 rounds, against {} for a central linear model",
        [
            (lambda: _b11_r2("no-dp"), ".3f"),
            (lambda: _b11_r2("dp-eps-3"), ".3f"),
            (lambda: _b11_r2("dp-eps-3-20-rounds"), ".3f"),
            (lambda: B["B11"]["regression"]["central_linear_r2"], ".3f"),
        ],
    ),
    (
        "README.md",
        "launcher, a fresh interpreter per message, a round took {} s (docs/deploy.md)",
        [(lambda: _b8("subprocess", "later_round_mean"), ".0f")],
    ),
    (
        "README.md",
        "a deployed round is still {}x a simulated one on a small model (B8)",
        [(lambda: _b8("fork", "ratio_later_rounds"), ".1f")],
    ),
    (
        "docs/architecture.md",
        "against {} KB of fp32 weights of the default MLP, B5 of "
        "`python -m benchmarks`",
        [(lambda: B["B5"]["points"][0]["fp32_bytes"] / 1024, ".0f")],
    ),
    *[
        ("docs/data.md", f"| {row} | {{}}{unit} |", [(lambda k=key: B["B7"][k], fmt)])
        for row, key, fmt, unit in [
            ("pandas `read_csv` (baseline)", "pandas read_csv (s)", ".2f", " s"),
            (
                "import throughput / pandas `read_csv`",
                "import / pandas throughput",
                ".3f",
                "",
            ),
            (
                "`read_frame` (verify, decrypt, Parquet → DataFrame)",
                "vault read_frame (s)",
                ".2f",
                " s",
            ),
            (
                "`iter_batches` (same, one chunk at a time)",
                "vault iter_batches (s)",
                ".2f",
                " s",
            ),
            (
                "raw AES-256-GCM decryption of the same chunk bytes",
                "raw AES-GCM decrypt (s)",
                ".3f",
                " s",
            ),
            (
                "`read_frame` throughput / raw AES-GCM",
                "read / raw AES-GCM throughput",
                ".3f",
                "",
            ),
            (
                "peak RSS: pandas `read_csv` (whole file)",
                "peak RSS pandas (MiB)",
                ".0f",
                " MiB",
            ),
            ("peak RSS: import", "peak RSS import (MiB)", ".0f", " MiB"),
            (
                "peak RSS: `read_frame` (whole dataset)",
                "peak RSS read_frame (MiB)",
                ".0f",
                " MiB",
            ),
            ("peak RSS: `iter_batches`", "peak RSS iter_batches (MiB)", ".0f", " MiB"),
        ]
    ],
    (
        "docs/data.md",
        "| `fedvault data import` | {} s ({} rows/s) |",
        [
            (lambda: B["B7"]["import (s)"], ".2f"),
            (lambda: B["B7"]["import rows/s"], ",.0f"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("doc", "text", "figures"),
    BENCHMARK_FIGURES,
    ids=[f"{d}:{t[:40]}" for d, t, _ in BENCHMARK_FIGURES],
)
def test_quoted_benchmark_figures_equal_results_json(doc, text, figures):
    """A rerun of ``python -m benchmarks`` that moves a figure beyond its printed
    rounding fails here until the doc quotes the new value."""
    printed = text.format(*(format(get(), fmt) for get, fmt in figures))
    assert printed in _flat(doc), f"{doc} should say: {printed}"


def test_benchmark_quotes_print_their_command():
    """Each doc that quotes a benchmark figure names the command producing it."""
    readme = _flat("README.md")
    assert "`python -m benchmarks --only B8`" in readme
    assert "`python -m benchmarks`" in readme
    assert "`python -m benchmarks --only B9`" in readme
    assert "`python -m benchmarks --only B8`" in _flat("docs/deploy.md")


def test_the_fault_matrix_case_count_is_the_collected_one():
    """README and docs/reliability.md say how many cases ``pytest tests/faults``
    runs; a case added or removed there fails here until both say so."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/faults", "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = re.search(r"^(\d+) tests? collected", done.stdout, flags=re.M)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    count = int(found.group(1))
    assert f"(`pytest tests/faults`, {count} cases)" in _flat("README.md")
    reliability = (ROOT / "docs" / "reliability.md").read_text()
    assert f"pytest tests/faults            # {count} cases" in reliability


def _python_block_after(doc: str, marker: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    found = re.search(re.escape(marker) + r".*?```python\n(.*?)```", text, flags=re.S)
    assert found, f"{doc}: no Python block after {marker!r}"
    return found.group(1)


def test_privacy_release_table_is_what_its_snippet_computes():
    """docs/privacy.md's cost column (epsilon alone and marginal per release, the
    total 2.998) is recomputed with the accountant from the sigmas its snippet
    prints; the slow test below checks the DP-SGD sigma against a rerun of the
    default command."""
    code = _python_block_after("docs/privacy.md", "the figures come from its")
    namespace: dict[str, Any] = {}
    exec(code.replace("print(", "_ = ("), namespace)  # noqa: S102 - the doc's code
    eps, steps = namespace["eps"], namespace
    summary, counts, dpsgd = steps["summary"], steps["counts"], steps["dpsgd"]
    total = eps(summary + counts + dpsgd)
    privacy = _flat("docs/privacy.md")
    assert f"the total of the default run is {total:.3f} (≤ 3)" in privacy
    rows = {
        "DP-SGD": (eps(dpsgd), total - eps(summary + counts), dpsgd, ".2f", ".2f"),
        "summary": (eps(summary), total - eps(counts + dpsgd), summary, ".2f", ".2f"),
        "counts": (eps(counts), total - eps(summary + dpsgd), counts, ".2f", ".3f"),
    }
    for name, (alone, marginal, release, fmt_alone, fmt_marginal) in rows.items():
        sigma = release[0].noise_multiplier
        shown = f"{sigma:.1f}" if sigma > 10 else f"{sigma:.2f}"
        cell = (
            f"\u03c3 = {shown}; \u03b5 {alone:{fmt_alone}} alone, "
            f"{marginal:{fmt_marginal}} marginal |"
        )
        assert cell in privacy, f"{name}: docs/privacy.md should say {cell}"


def _number_after(doc: str, pattern: str) -> float:
    found = re.search(pattern, _flat(doc))
    assert found, f"{doc}: nothing matches {pattern!r}"
    return float(found.group(1))


@pytest.mark.slow
def test_the_default_run_gives_the_figures_readme_and_privacy_md_quote(tmp_path):
    """Reruns README's measured command (``fedvault simulate --out DIR``: defaults,
    seed 0) and compares with the figures printed next to it, within noise: one test
    row is 0.9 points of accuracy; epsilon and sigma come from the accountant
    (deterministic)."""
    command = "fedvault simulate --out /tmp/rdef"
    assert f"(`{command}`, defaults: 5 sites, 10 rounds" in _flat("README.md")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "fedvault"),
            "simulate",
            "--out",
            str(tmp_path / "run"),
            "--format",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final, sites = summary["final"], list(summary["sites"].values())
    accuracy = _number_after("README.md", r"\*\*test accuracy (0\.\d+), AUC")
    auc = _number_after("README.md", r"\*\*test accuracy 0\.\d+, AUC (0\.\d+)\*\*")
    epsilon = _number_after("README.md", r"every site spent \*\*ε = (\d\.\d+) ≤ 3\*\*")
    assert final["accuracy"] == pytest.approx(accuracy, abs=0.02)  # 2 of 114 rows
    assert final["auc"] == pytest.approx(auc, abs=0.01)
    assert len(sites) == 5
    for site in sites:
        assert site["epsilon_spent"] == pytest.approx(epsilon, abs=1e-4)
        assert site["epsilon_spent"] <= site["epsilon_budget"] == 3.0
    # docs/privacy.md: the DP-SGD release's sigma and the run's total
    code = _python_block_after("docs/privacy.md", "the figures come from its")
    sigma = float(re.search(r"dpsgd = \[Step\(noise_multiplier=([\d.]+)", code)[1])
    total = _number_after(
        "docs/privacy.md", r"the total of the default run is ([\d.]+)"
    )
    for site in sites:
        assert site["noise_multiplier"] == pytest.approx(sigma, abs=1e-3)
        assert site["epsilon_spent"] == pytest.approx(total, abs=1e-3)
    # docs/architecture.md: the preprocessing each message carries, as sent
    from fedvault.common.preprocessing import Preprocessing

    sent = Preprocessing.from_json(
        (tmp_path / "run" / "preprocessing.json").read_text()
    )
    kb = _number_after("docs/architecture.md", r"message\*\* \(([\d.]+) KB as JSON")
    assert len(sent.to_json()) / 1000 == pytest.approx(kb, abs=0.1)


def test_privacy_fixed_sigma_epsilons_are_the_accountants():
    """docs/privacy.md's fixed-sigma table: each epsilon is the RDP accountant's
    for the DP-SGD steps of that federation (q = 1/3, 3 steps a round, 10 rounds)."""
    from fedvault.common.privacy import Step, epsilon_spent

    text = (ROOT / "docs" / "privacy.md").read_text(encoding="utf-8")
    sigmas = re.search("^\\| fixed \u03c3 \\|(.*)\\|$", text, flags=re.M)
    epsilons = re.search(r"^\| ε per site \(DP-SGD steps alone\) \|(.*)\|$", text, re.M)
    assert sigmas and epsilons, "docs/privacy.md: the fixed-sigma table moved"
    for sigma, printed in zip(
        sigmas[1].split("|"), epsilons[1].split("|"), strict=True
    ):
        steps = [Step(noise_multiplier=float(sigma), sample_rate=1 / 3, steps=30)]
        got = epsilon_spent(steps, delta=1e-5, accountant="rdp")
        decimals = len(printed.strip().partition(".")[2])
        assert f"{got:.{decimals}f}" == printed.strip(), f"sigma {sigma.strip()}"


def test_privacy_audit_lower_bounds_follow_from_their_counts():
    """docs/privacy.md's audit table: each empirical lower bound is the bound of
    its canaries, guesses and right guesses; the perfect-guessing ceilings too."""
    import math

    from fedvault.server.audit_bound import epsilon_lower_bound, perfect_guessing_bound

    text = (ROOT / "docs" / "privacy.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| (\d) sites, [^|]+ \| [^|]+ \| \**([\d.]+)\** "
        r"\| (\d+) \| (\d+) \| (\d+) \|",
        text,
        flags=re.M,
    )
    assert len(rows) == 6, "docs/privacy.md: the audit table moved"
    for _sites, bound, canaries, guesses, correct in rows:
        got = epsilon_lower_bound(
            canaries=int(canaries),
            guesses=int(guesses),
            correct=int(correct),
            delta=1e-5,
        )
        # a lower bound is printed rounded down (never claims more than shown)
        assert f"{math.floor(got * 1000) / 1000:.3f}" == bound, (guesses, correct)
    flat = _flat("docs/privacy.md")
    for r, m in ((40, 200), (80, 400)):  # all r right, at the table's m and delta
        ceiling = epsilon_lower_bound(canaries=m, guesses=r, correct=r, delta=1e-5)
        assert ceiling <= perfect_guessing_bound(r)  # the delta = 0 ceiling
        assert f"{ceiling:.2f} for r = {r}" in flat


def test_the_model_card_excerpt_is_consistent():
    """docs/report.md's card excerpt: the accuracy interval is the Wilson interval
    of that accuracy on the 114 test rows, and e^epsilon is printed right."""
    import math

    from fedvault.server.model_card import wilson

    flat = _flat("docs/report.md")
    found = re.search(r"\| accuracy \| (0\.\d+) \| \[(0\.\d+), (0\.\d+)\] \|", flat)
    assert found, "docs/report.md: the card excerpt moved"
    accuracy = float(found[1])
    right = round(accuracy * 114)
    assert f"{right / 114:.4f}" == found[1]
    got = wilson(right, 114)
    assert (f"{got[0]:.4f}", f"{got[1]:.4f}") == (found[2], found[3])
    eps = re.search(r"by at most a factor e\^(\d\.\d+) \(about ([\d.]+)x\)", flat)
    assert eps, "docs/report.md: the card's guarantee sentence moved"
    assert f"{math.exp(float(eps[1])):.1f}" == eps[2]


def test_the_data_md_reading_snippet_runs_as_printed(tmp_path, monkeypatch):
    """docs/data.md's Python snippet, on the vault README's walk-through makes
    (its commands, as printed, for one site), gives the demo's target."""
    from typer.testing import CliRunner

    from fedvault.common.cli import build_app

    readme = _flat("README.md").replace(" \\ ", " ")  # continuation lines joined
    commands = [
        "fedvault data demo --sites 3 --out demo",
        "fedvault data keygen keys/vault.key",
        "fedvault data keygen keys/secret.key",
        "fedvault data import demo/site-$i.csv --schema demo/schema.toml "
        "--vault vaults/site-$i --key keys/vault.key --secret keys/secret.key",
    ]
    monkeypatch.chdir(tmp_path)
    app, runner = build_app(), CliRunner()
    for command in commands:
        assert command in readme, command
        args = command.replace("$i", "1").replace("--sites 3", "--sites 1").split()
        done = runner.invoke(app, args[1:])
        assert done.exit_code == 0, (command, done.output)
    code = _python_block_after("docs/data.md", "**Reading**")
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - the doc's code, as printed
    assert namespace["target"] == "diagnosis"
    assert len(namespace["frame"]) > 0 and "diagnosis" in namespace["frame"]
    assert namespace["batch"] is not None


def _simulate(args: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedvault"), *args.split()[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: a run that stopped
    out = args.split("--out ")[1].split()[0] if "--out " in args else None
    assert out, args
    return dict(json.loads((cwd / out / "summary.json").read_text()))


@pytest.mark.slow
def test_the_next_model_example_gives_readmes_figures(tmp_path):
    """README's --init-model example (two 5-round runs on one site state), rerun
    as printed: round 1's accuracy of each version within two test rows, each
    site's lifetime epsilon after each run as the accountant gives it."""
    readme = _flat("README.md")
    v1 = (
        "fedvault simulate --state sites/ --site-budget 6 --epsilon 2 --rounds 5 "
        "--out runs/v1"
    )
    v2 = (
        "fedvault simulate --state sites/ --epsilon 2 --rounds 5 --init-model runs/v1 "
        "--out runs/v2"
    )
    assert v1 in readme and v2 in readme
    quoted = re.search(
        r"Measured here: round 1 of v2 reached test accuracy (0\.\d+) \(v1's round 1: "
        r"(0\.\d+)\), and each site's lifetime ε on its dataset went from ([\d.]+) to "
        r"([\d.]+) of its 6",
        readme,
    )
    assert quoted, "README no longer quotes the --init-model example's figures"
    acc2, acc1, life1, life2 = map(float, quoted.groups())
    first, second = _simulate(v1, tmp_path), _simulate(v2, tmp_path)
    assert first["history"][0]["accuracy"] == pytest.approx(acc1, abs=0.02)
    assert second["history"][0]["accuracy"] == pytest.approx(acc2, abs=0.02)
    for summary, lifetime in ((first, life1), (second, life2)):
        for site in summary["sites"].values():
            assert site["epsilon_lifetime"] == pytest.approx(lifetime, abs=1e-3)


@pytest.mark.slow
def test_the_fixed_sigma_example_declines_and_stops_where_readme_says(tmp_path):
    """README's first ledger example, rerun as printed (with --out): the round
    sites first decline in, the round the run stops at, its final accuracy."""
    command = (
        "fedvault simulate --rounds 50 --sites 4 --partition dirichlet:1.0 "
        "--noise-multiplier 3"
    )
    readme = _flat("README.md")
    assert command in readme
    quoted = re.search(
        r"The first command, measured here: .*? declined from round (\d+), the others "
        r"trained on; the run stopped at round (\d+) when only one site could still "
        r"train \(test accuracy (0\.\d+)",
        readme,
    )
    assert quoted, "README no longer quotes the fixed-sigma example's figures"
    first_decline, stop, accuracy = int(quoted[1]), int(quoted[2]), float(quoted[3])
    summary = _simulate(command + " --out out", tmp_path)
    declined = [
        h["round"]
        for h in summary["history"]
        if any(state.startswith("declined") for state in h["site_states"].values())
    ]
    assert declined and declined[0] == first_decline
    assert summary["status"] == "stopped"
    assert summary["stop_reason"].startswith(f"round {stop}: only 1 site(s) trained")
    assert summary["final"]["accuracy"] == pytest.approx(accuracy, abs=0.02)
