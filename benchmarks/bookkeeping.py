"""B3: privacy bookkeeping — share of a site's round spent planning noise and
computing epsilon (policy, ledger, accountant), against the local training itself.

One simulated site of the default federation (5 sites on the embedded data), its
real policy and ledger in a temporary state folder, the same calls the ClientApp
makes, in the same order, each timed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


def measure(rounds: int) -> dict[str, Any]:
    import torch

    from fedvault.client.budget import SiteBudget
    from fedvault.client.training import LocalSettings, dp_schedule, train_private
    from fedvault.common.config import TrainingConfig
    from fedvault.common.models import build_model
    from fedvault.common.preprocessing import merge_summaries, site_summary
    from fedvault.common.privacy import Step
    from fedvault.server import simulate as sim

    torch.set_num_threads(1)
    cfg = sim.load_config({"sites": 5, "rounds": rounds})
    prepared = sim.prepare_data(cfg)
    name, part = prepared.sites[0]
    prep = merge_summaries([site_summary(part, "target")], "target")
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(prep.transform(part)),
        torch.from_numpy(prep.encode_labels(part["target"])),
    )
    t: TrainingConfig = prepared.training
    local = LocalSettings(
        num_classes=2, lr=t.lr, epochs=t.local_epochs, batch_size=t.batch_size
    )
    model = build_model("mlp", in_features=prep.num_features, num_classes=2)
    book, train = [], []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        (state / "site.toml").write_text(
            '[privacy]\ndataset-id = "bench"\nepsilon-max = 3.0\n'
            f"delta = {t.delta}\nmax-grad-norm = 1.0\nmin-noise-multiplier = 0.3\n"
        )
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            budget = SiteBudget.open(
                policy_file=state / "site.toml",
                state_dir=state,
                run_id="bench",
                settings=t,
            )
            assert isinstance(budget, SiteBudget)
            plan = budget.plan_round(dp_schedule(len(data), t.batch_size))
            assert isinstance(plan, Step)
            t1 = time.perf_counter()
            train_private(model, data, local, plan=plan, max_grad_norm=1.0)
            t2 = time.perf_counter()
            budget.record(r, plan, f"{r:064x}")
            t3 = time.perf_counter()
            book.append((t1 - t0) + (t3 - t2))
            train.append(t2 - t1)
    total_book, total_train = sum(book), sum(train)
    return {
        "rounds": rounds,
        "site": name,
        "bookkeeping_seconds": total_book,
        "first_round_bookkeeping_seconds": book[0],
        "training_seconds": total_train,
        "share_of_round_time": total_book / (total_book + total_train),
        "per_round_seconds": total_book / rounds,
    }


def run(quick: bool) -> dict[str, Any]:
    result = measure(rounds=5 if quick else 10)
    print(
        f"B3 bookkeeping share of a site's round time: "
        f"{100 * result['share_of_round_time']:.1f}% over {result['rounds']} rounds "
        "(round 1, which plans sigma: "
        f"{result['first_round_bookkeeping_seconds']:.2f} s)",
        flush=True,
    )
    return result
