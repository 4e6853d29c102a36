"""The README's example commands run as printed, on the files in examples/, and
every ``fedvault`` command line in README.md and docs/ names options that exist."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from fedvault.common.cli import build_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = (
    "fedvault simulate --data examples/visits.csv --target outcome "
    "--partition column:hospital_id",
    "fedvault simulate --config examples/study.toml --seed 3 --out runs/study-3",
)


def _commands(text: str) -> list[str]:
    """The fedvault command lines of a Markdown text's code blocks (continuations
    joined, prompts and comments dropped; synopsis lines with placeholders and
    shell loops skipped)."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if "(" in line.split("#")[0] or "[" in line.split("#")[0]:
                continue  # a synopsis with placeholders
            # a command ends at a run of spaces (an aligned comment or diagram)
            line = re.split(r"\s{2,}", line)[0]
            for part in line.split("&&"):
                part = part.strip()
                skip = re.search(r"[|$]|--help", part)
                if part.startswith("fedvault ") and not skip:
                    out.append(part)
    return out


def _documented() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [
        (f.name, command)
        for f in files
        for command in _commands(f.read_text(encoding="utf-8"))
    ]


def test_the_readme_examples_are_documented():
    commands = [c for _, c in _documented()]
    for example in EXAMPLES:
        assert example in commands


@pytest.mark.parametrize(("doc", "command"), _documented())
def test_documented_command_lines_parse(doc, command):
    """Every option and argument is one the command accepts (nothing is run)."""
    group = typer.main.get_command(build_app())
    args = shlex.split(command)[1:]
    ctx = group.make_context("fedvault", list(args), resilient_parsing=False)
    names = ctx.protected_args + ctx.args
    cmd: click.Command = group
    while isinstance(cmd, click.Group) and names and names[0] in cmd.commands:
        sub = cmd.commands[names[0]]
        ctx = sub.make_context(names[0], names[1:], parent=ctx)
        names = ctx.protected_args + ctx.args if isinstance(sub, click.Group) else []
        cmd = sub
    assert not isinstance(cmd, click.Group), f"{doc}: {command}: not a command"


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=["visits", "study"])
def test_the_readme_examples_run(tmp_path, example):
    args = shlex.split(example)[1:]
    if "--out" in args:
        args[args.index("--out") + 1] = str(tmp_path / "out")
    else:
        args += ["--out", str(tmp_path / "out")]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedvault"), *args, "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed"
    # AUC, not accuracy: the visits example declares no ranges, so its sites bound
    # values with a wide asinh range and the noisy summary shifts the standardized
    # features; the model ranks well (0.95) but its 0.5 threshold can land on the
    # majority class (accuracy 0.63 measured; README says so: a known gap)
    assert summary["final"]["auc"] > 0.85
    sites = summary["sites"].values()
    assert all(s["epsilon_spent"] <= s["epsilon_budget"] for s in sites)
    if "visits.csv" in example:  # the figures README prints for this run
        readme = " ".join((ROOT / "README.md").read_text().split())
        quoted = re.search(
            r"run, measured here: AUC (0\.\d+) but test accuracy only (0\.\d+), "
            r"the majority class, ε ≤ (\d\.\d+) at every hospital",
            readme,
        )
        assert quoted, "README no longer quotes the visits.csv run's figures"
        auc, accuracy, epsilon = map(float, quoted.groups())
        assert summary["final"]["auc"] == pytest.approx(auc, abs=0.03)
        assert summary["final"]["accuracy"] == pytest.approx(accuracy, abs=0.03)
        assert all(s["epsilon_spent"] <= epsilon + 1e-3 for s in sites)
