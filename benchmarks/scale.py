"""B4: scale — one simulated federation with more and more sites.

Sites 10 -> 100 -> 1,000 (-> 10,000 when asked), 10 sampled per round, on a synthetic
table large enough that every site has rows to train (~20 per site); 3 rounds each.
Reported: time per round after the first, the first round and start-up, and peak
memory of the whole machine above its idle level while the run is going (Ray actors
are separate processes, so one process' peak would undercount).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SAMPLED = 10
ROUNDS = 3


def _used_mb() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = float(value.split()[0]) / 1024
    return info["MemTotal"] - info["MemAvailable"]


class _Peak:
    def __init__(self) -> None:
        self.base = _used_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, _used_mb())

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _table(path: Path, rows: int) -> None:
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=30, n_informative=10, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(30)])
    frame["target"] = y
    frame.to_parquet(path, index=False)


def measure(sites: int) -> dict[str, Any]:
    from fedvault.server import simulate as sim

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "table.parquet"
        _table(data, rows=max(2_000, sites * 25))
        cfg = sim.load_config(
            {
                "sites": sites,
                "rounds": ROUNDS,
                "data": str(data),
                "fraction-train": min(1.0, SAMPLED / sites),
                "timeout": 3600.0,
            }
        )
        called = time.time()
        with _Peak() as peak:
            summary = sim.run(cfg, Path(tmp) / "run")
        events = [
            json.loads(x)
            for x in (Path(tmp) / "run" / "progress.jsonl").read_text().splitlines()
        ]
    rounds = [e for e in events if e["event"] == "round"]
    ready = next(e["time"] for e in events if e["event"] == "ready")
    later = [r["seconds"] for r in rounds[1:]]
    return {
        "sites": sites,
        "sampled_per_round": min(sites, SAMPLED),
        "startup_seconds": ready - called,
        "first_round_seconds": rounds[0]["seconds"],
        "later_round_seconds": sum(later) / len(later),
        "peak_memory_above_idle_mb": peak.peak - peak.base,
        "accuracy": summary["final"]["accuracy"],
    }


def run(quick: bool, *, largest: int = 1_000) -> dict[str, Any]:
    sizes = (
        [10, 100] if quick else [s for s in (10, 100, 1_000, 10_000) if s <= largest]
    )
    points = []
    for sites in sizes:
        point = measure(sites)
        points.append(point)
        print(
            f"B4 {sites:6d} sites: {point['later_round_seconds']:.2f} s/round "
            f"({point['sampled_per_round']} sampled), start-up "
            f"{point['startup_seconds']:.1f} s, "
            f"peak +{point['peak_memory_above_idle_mb']:.0f} MB",
            flush=True,
        )
    return {"rounds": ROUNDS, "points": points}
