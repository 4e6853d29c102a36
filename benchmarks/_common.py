"""Shared helpers: machine facts, timing, child processes for peak memory."""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Callable
from typing import Any


def machine() -> dict[str, Any]:
    import flwr
    import opacus
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": mp.cpu_count(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "flwr": flwr.__version__,
        "cuda": torch.cuda.is_available(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(
    queue: Any, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]
) -> None:
    try:
        result = fn(**kwargs)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        queue.put(("ok", result))
    except Exception as exc:  # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_child(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(**kwargs)`` in a fresh process (own peak RSS); returns its dict."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, kwargs))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(payload)
    return dict(payload)


def best_of(fn: Callable[[], None], repeats: int) -> float:
    """Smallest wall time of ``repeats`` runs (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
