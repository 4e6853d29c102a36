"""kill -9 in the middle of a write, and a full disk: the old state stays intact
and readable, and a full disk is an error that names the file.

The kill cases run the write in a loop in a child process and kill it with
SIGKILL at a random moment; whatever moment it hits, what is on disk must be the
state before or after one whole write (a torn ledger line only at the tail, which
``repair`` drops)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedvault.client.ledger import PrivacyLedger, repair_torn_tail, verify_ledger
from fedvault.common.errors import IntegrityError
from fedvault.common.files import atomic_write
from fedvault.common.privacy import Step

STEP = Step(noise_multiplier=1.0, sample_rate=0.01, steps=10)


def _kill_midway(script: str, cwd: Path, watch: Path, settle: float) -> None:
    """Run ``script`` (it writes in a loop), wait until ``watch`` changes (the
    writing has begun: imports take a while), then SIGKILL it ``settle`` s later."""
    before = watch.stat().st_mtime_ns
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while watch.stat().st_mtime_ns == before:
        assert child.poll() is None, "the writer exited before writing"
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.01)
    time.sleep(settle)
    assert child.poll() is None, "the writer finished before it was killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("settle", [0.05, 0.4])
def test_kill_during_ledger_appends_leaves_a_ledger_that_verifies(tmp_path, settle):
    ledger = PrivacyLedger.open(tmp_path, "ds", delta=1e-5, accountant="rdp")
    ledger.append("r", 0, STEP, 1.0, "0" * 64)
    _kill_midway(
        f"""
        from pathlib import Path
        from fedvault.client.ledger import PrivacyLedger
        from fedvault.common.privacy import Step
        step = Step(noise_multiplier=1.0, sample_rate=0.01, steps=10)
        ledger = PrivacyLedger.open(Path({str(tmp_path)!r}), "ds", delta=1e-5,
                                    accountant="rdp")
        for i in range(1, 10**6):
            ledger.append("r", i, step, 1.0, f"{{i:064x}}")
        """,
        tmp_path,
        tmp_path / "ledger" / "ds.jsonl",
        settle,
    )
    try:
        verify_ledger(tmp_path, "ds")
    except IntegrityError:  # killed between the line and the head: repairable
        repair_torn_tail(tmp_path, "ds")
        verify_ledger(tmp_path, "ds")
    reopened = PrivacyLedger.open(tmp_path, "ds", delta=1e-5, accountant="rdp")
    rounds = [r.round for r in reopened.records()]
    assert rounds == list(range(len(rounds))) and len(rounds) >= 2


@pytest.mark.slow
def test_kill_during_atomic_writes_leaves_one_whole_file(tmp_path):
    target = tmp_path / "checkpoint.bin"
    atomic_write(target, b"v0" * 50_000)
    _kill_midway(
        f"""
        from pathlib import Path
        from fedvault.common.files import atomic_write
        for i in range(1, 10**6):
            atomic_write(Path({str(target)!r}), (b"v%d" % (i % 10)) * 50_000)
        """,
        tmp_path,
        target,
        0.3,
    )
    data = target.read_bytes()
    assert len(data) == 100_000 and data == data[:2] * 50_000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert all(name.startswith(".checkpoint.bin.") for name in leftovers)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root can mount one; skipped where it cannot)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def _fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tiny_disk):
    target = tiny_disk / "run" / "summary.json"
    atomic_write(target, b"old")
    _fill(tiny_disk)
    with pytest.raises(OSError, match=f"No space left on device: '{target}'"):
        atomic_write(target, b"x" * 100_000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_a_full_disk_during_a_ledger_append_names_the_ledger(tiny_disk):
    ledger = PrivacyLedger.open(tiny_disk, "ds", delta=1e-5, accountant="rdp")
    ledger.append("r", 0, STEP, 1.0, "0" * 64)
    _fill(tiny_disk)
    with pytest.raises(
        OSError, match=r"No space left on device: '.*/ledger/ds\.(jsonl|head)'"
    ):
        for i in range(1, 1000):
            ledger.append("r", i, STEP, 1.0, f"{i:064x}")
    (tiny_disk / "filler").unlink()
    try:
        verify_ledger(tiny_disk, "ds")
    except IntegrityError:
        repair_torn_tail(tiny_disk, "ds")
        verify_ledger(tiny_disk, "ds")


def test_a_full_disk_when_a_ledger_starts_names_a_path(tiny_disk):
    """A new ledger writes the site key and the keyed head: either names its file."""
    _fill(tiny_disk)
    with pytest.raises(OSError, match=rf"No space left on device: '?{tiny_disk}/"):
        PrivacyLedger.open(tiny_disk / "site", "ds", delta=1e-5, accountant="rdp")
