"""docs/deploy.md's "Try it on one machine" runs exactly as printed: its commands in
order (each `start` in its own process, as in its own terminal), its files written
as shown, a coordinator and two sites over TLS on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from consortium import stop_all

from fedvault.common.net import port_in_use

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Try it on one machine"


def walkthrough() -> list[tuple[str, str]]:
    """The section's steps in order: ("file", "PATH\\nTEXT") for a TOML block whose
    first line is ``# PATH``, ("run", COMMAND) for each line of a sh block."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    steps: list[tuple[str, str]] = []
    for lang, block in re.findall(r"```(sh|toml)\n(.*?)```", section, flags=re.S):
        if lang == "toml":
            first, _, body = block.partition("\n")
            steps.append(("file", f"{first.removeprefix('# ')}\n{body}"))
        else:
            steps += [("run", ln) for ln in block.splitlines() if ln.strip()]
    return steps


def test_the_walkthrough_is_what_the_test_runs():
    steps = walkthrough()
    runs = [step for kind, step in steps if kind == "run"]
    assert all(step.startswith("fedvault ") for step in runs)
    files = [s[1].split("\n")[0] for s in steps if s[0] == "file"]
    assert files == ["coordinator.toml", "hospital-a/site.toml", "hospital-b/site.toml"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_the_deploy_walkthrough_runs_as_printed(tmp_path):
    ports = [f"127.0.0.1:{p}" for p in (9092, 9093, 9094, 9095)]
    if any(port_in_use(p, key="port") for p in ports):
        pytest.skip("a port of the walk-through (9092-9095) is in use here")
    fedvault = str(Path(sys.executable).parent / "fedvault")
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for kind, step in walkthrough():
            if kind == "file":
                path, _, body = step.partition("\n")
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / path).write_text(body)
                continue
            args = [fedvault, *shlex.split(step)[1:]]
            if args[2] == "start":  # its own terminal
                with (tmp_path / f"{len(running)}.out").open("wb") as out:
                    running[step] = subprocess.Popen(
                        args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                continue
            if args[2] == "stop":  # after the run, as the section says
                coordinator = next(iter(running.values()))
                assert coordinator.wait(timeout=400) == 0, _outputs(tmp_path)
            done = subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=300)
            assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
        for proc in running.values():  # `client stop` returns once the lock is
            proc.wait(timeout=60)  # free; the process may still be exiting
    finally:
        survivors = stop_all(running.values(), tmp_path)
    assert not survivors
    exits = {step: proc.returncode for step, proc in running.items()}
    assert all(code == 0 for code in exits.values()), f"{exits}\n{_outputs(tmp_path)}"
    summary = json.loads(
        (tmp_path / "consortium-run" / "output" / "summary.json").read_text()
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert all(
        states == {"hospital-a": "trained", "hospital-b": "trained"}
        for states in summary["site_states"].values()
    )


def _outputs(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in root.glob("*.out"))
