"""fedvault's way of running Flower's SuperNode and ClientApp processes."""

import functools
import importlib
import subprocess
import sys
import time

from fedvault.client import runtime


def test_the_flower_parts_it_tunes_are_the_ones_it_was_built_for():
    # A Flower upgrade that moves or renames these must fail here, not slow down or
    # break a deployment silently.
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    assert loop.time is time and callable(loop.pull_objects)
    child = runtime._tune_clientapp()
    assert isinstance(child.pull_and_inflate_object_from_tree, functools.partial)
    assert child.pull_and_inflate_object_from_tree.keywords == runtime.LOCAL_BACKOFF
    assert runtime._tune_clientapp() is child  # wrapping twice is a no-op
    assert not isinstance(
        child.pull_and_inflate_object_from_tree.func, functools.partial
    )


def test_supernode_idle_wait_becomes_the_poll_interval(monkeypatch):
    slept = []
    monkeypatch.setattr(runtime.time, "sleep", slept.append)
    clock = runtime._Clock(0.25)
    clock.sleep(3)  # Flower's idle wait between asks to the coordinator
    clock.sleep(0.5)  # a local wait for the ClientApp's reply
    assert slept == [0.25, runtime.LOCAL_WAIT]
    assert clock.monotonic is runtime.time.monotonic


def test_launcher_imports_leave_no_thread_or_cuda_context_to_fork():
    code = (
        "import importlib, threading, torch\n"
        "from fedvault.client.runtime import WARM_MODULES, _tune_clientapp\n"
        "[importlib.import_module(m) for m in WARM_MODULES]\n"
        "_tune_clientapp()\n"
        "print(threading.active_count(), torch.cuda.is_initialized())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "False"]


def test_usage_error_exits_2(capsys):
    assert runtime.main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err


def test_launcher_leaves_when_its_supernode_is_gone():
    # Nothing answers at the address (the SuperNode died or never came up): the
    # launcher must not retry forever but notice that its SuperNode is gone.
    from fedvault.common.processes import free_port

    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "fedvault.client.runtime", "launcher", address, str(supernode.pid)]
    launcher = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        assert launcher.poll() is None  # waiting for its SuperNode's API
        supernode.kill()
        supernode.wait()
        assert launcher.wait(timeout=60) == 0
    finally:
        for proc in (supernode, launcher):
            if proc.poll() is None:
                proc.kill()
