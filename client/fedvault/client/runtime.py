"""A site's Flower processes, started so that a round costs its training, not start-up.

Flower-facing (checked against flwr 1.39). Left to its defaults, Flower makes a
deployed round slow on a small model:

- the SuperNode asks the coordinator for work every 3 s while idle, and checks for
  its ClientApp's reply in 0.5 s steps;
- in its default ``subprocess`` isolation it starts ``flower-superexec``, which asks
  the node for a task every second and starts a fresh ``flwr-clientapp``
  interpreter per message; each imports torch, Opacus and pandas again (seconds on
  a 2-core machine) before it trains.

With ``isolation = "fork"`` (the default), ``fedvault client start`` runs instead

- ``python -m fedvault.client.runtime supernode ARGS``: Flower's own SuperNode
  command with ``--isolation process``; its idle wait is the site's
  ``poll-interval`` and its local waits 20 ms;
- ``python -m fedvault.client.runtime launcher ADDRESS PID``: in Flower's SuperExec
  role, a process that imports fedvault's ClientApp once, asks the node's Runtime
  API for a task every 50 ms and forks one child per task. The child runs Flower's
  own ``run_clientapp`` with that task's token, then exits: one process per
  message, as with Flower, sharing nothing with the next message but the imported
  modules. The launcher never runs torch itself, so no thread pool or CUDA context
  is inherited across the fork.

Flower also retries a message's content that has not arrived yet after 1 s,
doubling up to 10 s; here the SuperNode retries the coordinator from 20 ms (up to
0.5 s) and a ClientApp its own SuperNode from 20 ms (up to 0.2 s).

``isolation = "subprocess"`` keeps Flower's own launcher, a fresh interpreter per
message. Fork needs a POSIX system; elsewhere use ``subprocess``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import time
from types import ModuleType
from typing import Any

from fedvault.common.processes import alive, die_with_parent

logger = logging.getLogger("fedvault.runtime")

LOCAL_WAIT = 0.02  # seconds between local checks (the node's Runtime API)

# Imported by the launcher before it forks: fedvault's ClientApp and what its
# handlers import lazily (Opacus for DP-SGD and accounting, scikit-learn for AUC,
# the vault reader), so that no child imports anything.
WARM_MODULES = (
    "fedvault.client.app",
    "fedvault.client.data.vault",
    "opacus",
    "opacus.accountants",
    "opacus.accountants.analysis.rdp",
    "opacus.accountants.utils",
    "opacus.data_loader",
    "pandas.io.parquet",
    "sklearn.metrics",
)

# Flower retries an object that is not there yet (a message whose content is still
# being uploaded) after 1 s, doubling up to 10 s: most of a quick round. Between a
# SuperNode and the coordinator fedvault starts at 20 ms and caps at 0.5 s; between
# a ClientApp and its own SuperNode (loopback) at LOCAL_WAIT, capped at 0.2 s.
# Flower's limit of 500 tries per object would, at these intervals, give up after a
# few minutes instead of Flower's ~80 (and a ClientApp that gives up sends no reply,
# leaving its SuperNode waiting for one); only Flower's overall max_time applies.
REMOTE_BACKOFF: dict[str, Any] = {
    "initial_backoff": 0.02,
    "backoff_cap": 0.5,
    "max_tries_per_object": None,
}
LOCAL_BACKOFF: dict[str, Any] = {
    "initial_backoff": LOCAL_WAIT,
    "backoff_cap": 0.2,
    "max_tries_per_object": None,
}


class _Clock:
    """``time`` for Flower's SuperNode loop: the idle wait (3 s in Flower, the one
    that asks the coordinator) becomes ``idle``, local waits ``LOCAL_WAIT``."""

    def __init__(self, idle: float) -> None:
        self._idle = idle

    def sleep(self, seconds: float) -> None:
        time.sleep(self._idle if seconds >= 1 else min(seconds, LOCAL_WAIT))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _flower_module(name: str, *attributes: str) -> ModuleType:
    """A Flower module, checked to have what this module replaces in it."""
    module = importlib.import_module(name)
    missing = [a for a in attributes if not hasattr(module, a)]
    if missing:
        raise RuntimeError(
            f"{name} has no {', '.join(missing)}: this Flower is not the one "
            'fedvault was built for (flwr 1.39); set isolation = "subprocess" in [site]'
        )
    return module


def _tune_supernode(idle: float) -> None:
    """Flower's SuperNode loop, with its waits and object retries shortened."""
    loop: Any = _flower_module(
        "flwr.supernode.start_client_internal", "time", "pull_objects"
    )
    if loop.time is not time:
        raise RuntimeError("flwr.supernode.start_client_internal.time is not `time`")
    loop.time = _Clock(idle)
    loop.pull_objects = functools.partial(loop.pull_objects, **REMOTE_BACKOFF)


def _tune_clientapp() -> Any:
    """Flower's ClientApp runtime, retrying its node's objects on the local clock."""
    runtime: Any = _flower_module(
        "flwr.supernode.runtime.run_clientapp",
        "run_clientapp",
        "pull_and_inflate_object_from_tree",
    )
    pull = runtime.pull_and_inflate_object_from_tree
    if not isinstance(pull, functools.partial):  # once per process
        runtime.pull_and_inflate_object_from_tree = functools.partial(
            pull, **LOCAL_BACKOFF
        )
    return runtime


def run_supernode(argv: list[str], *, idle: float) -> None:
    """Flower's ``flower-supernode`` command with ``argv``, polling every ``idle`` s."""
    from flwr.supernode.cli.flower_supernode import flower_supernode

    _tune_supernode(idle)
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                logger.warning("ClientApp process %d exited with %d", pid, code)
        children.discard(pid)


def _run_child(address: str, token: str, parent_pid: int) -> None:
    """In the forked child: Flower's ClientApp runtime for one task, then exit
    (and at once if the launcher dies: no ClientApp trains for a site that is gone)."""
    code = 1
    try:
        die_with_parent()
        _tune_clientapp().run_clientapp(
            runtime_api_address=address,
            token=token,
            insecure=True,
            parent_pid=parent_pid,
        )
        code = 0
    except SystemExit as exc:  # Flower ends every task with sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logger.exception("ClientApp task failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _connect(address: str) -> Any:
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    # One try per call: the launcher's own loop waits and retries, and checks
    # between tries that its SuperNode is still there (Flower's invoker would
    # retry a dead SuperNode forever).
    invoker = make_simple_http_retry_invoker()
    invoker.max_tries = 1
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=invoker,
    )


def run_launcher(address: str, *, parent_pid: int, poll: float = 0.05) -> int:
    """Fork a ClientApp process for every task the SuperNode at ``address`` has,
    until the SuperNode (``parent_pid``) is gone."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    for name in WARM_MODULES:
        importlib.import_module(name)
    _tune_clientapp()

    client = _connect(address)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    children: set[int] = set()
    logger.info("ClientApp launcher ready (pid %d, node %s)", os.getpid(), address)
    try:
        while alive(parent_pid):
            _reap(children)
            try:
                res = client.AcquireTask(request)
            except Exception as exc:
                logger.debug("Runtime API not answering: %s", exc)
                time.sleep(0.5)
                continue
            if not (res.HasField("task") and res.token):
                time.sleep(poll)
                continue
            pid = os.fork()
            if pid == 0:
                _run_child(address, res.token, parent_pid)
            children.add(pid)
    finally:
        client.close()
    return 0


def main(argv: list[str]) -> int:
    usage = (
        "usage: python -m fedvault.client.runtime supernode IDLE_S -- FLOWER_ARGS...\n"
        "       python -m fedvault.client.runtime launcher ADDRESS SUPERNODE_PID"
    )
    if len(argv) >= 3 and argv[0] == "supernode" and argv[2] == "--":
        run_supernode(argv[3:], idle=float(argv[1]))
        return 0
    if len(argv) == 3 and argv[0] == "launcher":
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return run_launcher(argv[1], parent_pid=int(argv[2]))
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
