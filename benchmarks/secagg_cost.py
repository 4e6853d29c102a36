"""B6: secure-aggregation cost — round time with / without SecAgg+ at 5, 10, 20 sites.

`fedvault simulate` on the embedded data, same seed, 5 rounds; the mean time of
rounds 2+ (training, aggregation and both evaluations) from the run's own progress
events.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def _round_seconds(sites: int, secagg: bool, rounds: int) -> float:
    from fedvault.server import simulate as sim

    with tempfile.TemporaryDirectory() as tmp:
        cfg = sim.load_config({"sites": sites, "rounds": rounds, "secagg": secagg})
        sim.run(cfg, Path(tmp) / "run")
        lines = (Path(tmp) / "run" / "progress.jsonl").read_text().splitlines()
    rounds_done = [e for e in map(json.loads, lines) if e["event"] == "round"]
    later = [r["seconds"] for r in rounds_done[1:]]
    return sum(later) / len(later)


def run(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 5
    points = []
    for sites in (5,) if quick else (5, 10, 20):
        plain = _round_seconds(sites, False, rounds)
        secure = _round_seconds(sites, True, rounds)
        points.append(
            {
                "sites": sites,
                "plain_seconds": plain,
                "secagg_seconds": secure,
                "ratio": secure / plain,
            }
        )
        print(
            f"B6 {sites:3d} sites: SecAgg+ round {secure:.2f} s vs {plain:.2f} s "
            f"= {secure / plain:.2f}x",
            flush=True,
        )
    return {"rounds": rounds, "points": points}
