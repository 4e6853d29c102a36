"""Flower's output made readable: no colour codes or routine lines in log files,
exit codes in words (a real pipe from a real process; no Flower needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from fedvault.client.flower_log import explain_failure
from fedvault.common.flower_logs import LogPump, explain_exit

# What a SuperNode dialing a name its coordinator's certificate lacks writes
# (flwr 1.39, colour codes included).
MISMATCH = (
    "\x1b[93mWARNING \x1b[0m:   Giving up reconnection after 2.13 seconds and "
    "3 tries.\n"
    "\x1b[91mERROR \x1b[0m:     Exit Code: 305\n"
    "Failed to initialize the connection to the SuperLink.\n"
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.2:55413: "
    "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
    "Verification Check failed.\n"
    "The SuperNode could not establish a connection to the SuperLink.\n\n"
    "For more information, visit: <https://flower.ai/docs/framework/1.39/en/"
    "ref-exit-codes/305.html>\n"
)


def test_a_hostname_mismatch_is_explained_without_terminal_codes():
    meaning = explain_failure(MISMATCH)
    assert "certificate does not name the host in `coordinator`" in meaning
    assert "\x1b" not in meaning and "Exit Code" not in meaning


def test_an_exit_code_is_translated_with_flowers_detail():
    text = MISMATCH.replace("Hostname Verification Check failed", "boom")
    assert explain_exit(text) == (
        "cannot connect to the coordinator (Flower exit code 305: Failed to "
        "initialize the connection to the SuperLink. failed to connect to all "
        "addresses; last error: UNKNOWN: ipv4:127.0.0.2:55413: Custom verification "
        "check failed with error: UNAUTHENTICATED: boom. The SuperNode could not "
        "establish a connection to the SuperLink.)"
    )
    assert explain_failure(text).startswith("cannot connect to the coordinator")
    assert explain_exit("INFO all good\n") is None


def test_the_log_file_gets_no_colour_codes_nor_routine_lines(tmp_path):
    lines = [
        "\x1b[92mINFO \x1b[0m:      Starting Flower SuperLink",
        'T INFO [uvicorn.access] 127.0.0.1:1 - "POST /x HTTP/1.1" 200',
        'T INFO [uvicorn.access] 127.0.0.1:1 - "POST /y HTTP/1.1" 500',
        "\x1b[91mERROR \x1b[0m:     it broke",
    ]
    code = "import sys; sys.stdout.write(sys.argv[1])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "\n".join(lines) + "\n"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    log = tmp_path / "flower.log"
    pump = LogPump(proc.stdout, log, [re.compile(rb'\[uvicorn\.access\] .*" 2\d\d$')])
    pump.start()
    proc.wait(timeout=30)
    pump.join(timeout=30)
    assert log.read_text().splitlines() == [
        "INFO :      Starting Flower SuperLink",
        'T INFO [uvicorn.access] 127.0.0.1:1 - "POST /y HTTP/1.1" 500',
        "ERROR :     it broke",
    ]
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_the_log_file_is_rotated_and_every_file_is_private(tmp_path, monkeypatch):
    from fedvault.common import flower_logs

    monkeypatch.setattr(flower_logs, "LOG_MAX_BYTES", 200)
    code = (
        "import sys\n"
        "for i in range(60): sys.stdout.write(f'\\x1b[92mINFO\\x1b[0m line {i:03d}\\n')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    log = tmp_path / "supernode.log"
    old = os.umask(0o022)  # what a careless umask would give
    try:
        pump = LogPump(proc.stdout, log)
        pump.start()
        proc.wait(timeout=30)
        pump.join(timeout=30)
    finally:
        os.umask(old)
    files = [log, *(log.with_name(f"{log.name}.{n}") for n in (1, 2, 3))]
    assert [f.exists() for f in files] == [True] * 4
    assert not log.with_name(f"{log.name}.4").exists()  # LOG_BACKUPS = 3
    assert all(f.stat().st_size <= 200 for f in files)
    assert log.read_text().splitlines()[-1] == "INFO line 059"
    assert all("\x1b" not in f.read_text() for f in files)
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
