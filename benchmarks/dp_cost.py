"""B1: DP-SGD cost — time per epoch, private / non-private, per Opacus mode.

Same model, data, batch size (32) and threads (1); each private configuration in its
own child process (its peak memory is its own), timed epoch by epoch in turn with a
non-private copy of the same model in that process (best of each): on a machine
shared with other work both see the same load, so the ratio holds where absolute
times do not. ``fedvault`` is the step a site runs for that model
(:func:`fedvault.client.training.train_private`'s engine: the book-keeping step for
plain MLPs, the layer-wise step for the cnn). Correctness: with noise 0 and a fixed
batch, each mode's update must equal the ``hooks`` mode's.
"""

from __future__ import annotations

import warnings
from typing import Any

from benchmarks._common import best_of, in_child

MODES = ("hooks", "ew", "functorch", "ghost")
FAST = "fedvault"  # fedvault's book-keeping step (plain MLPs only)
BATCH = 32
CLIP = 1.0


def _models() -> dict[str, Any]:
    from torch import nn

    return {
        "mlp-128": lambda d: nn.Sequential(
            nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 1)
        ),
        "mlp-512": lambda d: nn.Sequential(
            nn.Linear(d, 512), nn.ReLU(), nn.Linear(512, 1)
        ),
        "cnn": _fedvault_cnn,
        "cnn-digits": lambda d: nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 10),
        ),
    }


def _fedvault_cnn(features: int) -> Any:
    """fedvault's ``cnn`` for 8x8 digits as ``fedvault simulate --dataset digits
    --model cnn`` builds it (hidden 32), on flat rows of 64 pixels."""
    from torch import nn

    from fedvault.common.model_zoo import InputSpec, prepare_for_dp
    from fedvault.common.models import build_model

    side = int(features**0.5)
    spec = InputSpec.image(1, side, side)
    net = build_model("cnn", input_spec=spec, num_classes=10, hidden=32)
    return nn.Sequential(nn.Unflatten(1, (1, side, side)), *prepare_for_dp(net)[0])


def _data(model: str, rows: int) -> Any:
    import torch
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.preprocessing import StandardScaler
    from torch.utils.data import TensorDataset

    if model.startswith("cnn"):
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    else:
        x, y = load_breast_cancer(return_X_y=True)
        x = StandardScaler().fit_transform(x)
    reps = max(1, rows // len(x))
    xt = torch.tensor(x, dtype=torch.float32).repeat(reps, 1)
    yt = torch.tensor(y).repeat(reps)
    return TensorDataset(xt, yt)


def _loss(model: str) -> Any:
    from torch import nn

    if model.startswith("cnn"):
        return nn.CrossEntropyLoss(), lambda y: y.long()
    return nn.BCEWithLogitsLoss(), lambda y: y.float().unsqueeze(1)


def measure(*, model: str, mode: str, rows: int, repeats: int) -> dict[str, Any]:
    """Seconds per epoch for ``mode`` (or 'none' = non-private) and, for a private
    mode, for the non-private step timed in turn with it in this process."""
    import torch

    torch.set_num_threads(1)
    data = _data(model, rows)
    private = _epoch(model, mode, data)
    if mode == "none":
        private()  # warm-up
        return {"seconds_per_epoch": best_of(private, repeats)}
    plain = _epoch(model, "none", data)
    private()
    plain()  # warm-up
    times: dict[str, list[float]] = {"private": [], "plain": []}
    for _ in range(repeats):
        for name, epoch in (("private", private), ("plain", plain)):
            times[name].append(best_of(epoch, 1))
    return {
        "seconds_per_epoch": min(times["private"]),
        "non_private_seconds": min(times["plain"]),
    }


def _epoch(model: str, mode: str, data: Any) -> Any:
    """One epoch of ``mode`` on a fresh copy of ``model``, as a callable."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    net = _models()[model](data.tensors[0].shape[1])
    criterion, shape = _loss(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True)
    if mode == FAST:
        return _fast_epoch(net, data, model)
    if mode != "none":
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="rdp")
            wrapped = engine.make_private(
                module=net,
                optimizer=optimizer,
                data_loader=loader,
                criterion=criterion,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                grad_sample_mode=mode,
                poisson_sampling=True,
            )
        if mode == "ghost":
            net, optimizer, criterion, loader = wrapped
        else:
            net, optimizer, loader = wrapped

    def epoch() -> None:
        for x, y in loader:
            if len(y) == 0:
                continue
            optimizer.zero_grad()
            loss = criterion(net(x), shape(y))
            loss.backward()
            optimizer.step()

    return epoch


def _fast_epoch(net: Any, data: Any, model: str) -> Any:
    """An epoch of the step a site runs for ``net`` (training's engine choice)."""
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader

    loader = DPDataLoader.from_data_loader(DataLoader(data, batch_size=BATCH))
    step = _fast_step(net, model, int(len(data) * loader.sample_rate), 1.0, 0.05)
    _, shape = _loss(model)

    def epoch() -> None:
        for x, y in loader:
            step(x, shape(y))

    return epoch


def _fast_step(
    net: Any, model: str, ebs: int, sigma: float, lr: float, clip: float = CLIP
) -> Any:
    """fedvault's DP-SGD step for ``net``: book-keeping for plain MLPs, else the
    layer-wise step; RuntimeError for a model neither takes."""
    import torch

    from fedvault.client import _fastdp, _fastdp_layers

    per_sample = _per_sample(model)
    if _fastdp.supports(net):
        return lambda x, y: _fastdp.dp_sgd_step(
            net,
            x,
            y,
            per_sample,
            noise_multiplier=sigma,
            max_grad_norm=clip,
            expected_batch_size=ebs,
            lr=lr,
        )
    if not _fastdp_layers.supports(net):
        raise RuntimeError("not a model fedvault's own DP-SGD steps take")
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    return lambda x, y: _fastdp_layers.dp_sgd_step(
        net,
        optimizer,
        x,
        y,
        per_sample,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=ebs,
    )


def _per_sample(model: str) -> Any:
    from torch import nn

    if model.startswith("cnn"):
        return nn.CrossEntropyLoss(reduction="none")
    bce = nn.BCEWithLogitsLoss(reduction="none")
    return lambda out, y: bce(out, y).sum(dim=1)


def check_equal_updates(*, model: str) -> dict[str, Any]:
    """Noise 0, one fixed batch: every mode's update vs the hooks mode's."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, Subset

    torch.set_num_threads(1)
    data = Subset(_data(model, 64), range(BATCH))
    criterion_base, shape = _loss(model)
    updates = {}
    for mode in MODES:
        torch.manual_seed(0)
        net = _models()[model](data.dataset.tensors[0].shape[1])
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        loader = DataLoader(data, batch_size=BATCH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = PrivacyEngine().make_private(
                module=net,
                optimizer=opt,
                data_loader=loader,
                criterion=criterion_base,
                noise_multiplier=0.0,
                max_grad_norm=0.5,
                grad_sample_mode=mode,
                poisson_sampling=False,
            )
        m, o, crit = (
            wrapped[0],
            wrapped[1],
            (wrapped[2] if mode == "ghost" else criterion_base),
        )
        x, y = next(iter(loader))
        o.zero_grad()
        crit(m(x), shape(y)).backward()
        o.step()
        params = [p for p in m.parameters()]
        updates[mode] = torch.cat(
            [(a - b.detach()).flatten() for a, b in zip(before, params, strict=True)]
        )
    updates[FAST] = _fast_update(model, data, shape)
    ref = updates["hooks"]
    return {
        mode: bool(
            u.shape == ref.shape and torch.allclose(u, ref, rtol=1e-4, atol=1e-6)
        )
        for mode, u in updates.items()
    }


def _fast_update(model: str, data: Any, shape: Any) -> Any:
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    net = _models()[model](data.dataset.tensors[0].shape[1])
    before = [p.detach().clone() for p in net.parameters()]
    x, y = next(iter(DataLoader(data, batch_size=BATCH)))
    try:
        step = _fast_step(net, model, BATCH, 0.0, 1.0, clip=0.5)
    except RuntimeError:
        return torch.full((1,), float("nan"))
    step(x, shape(y))
    return torch.cat(
        [
            (a - b.detach()).flatten()
            for a, b in zip(before, net.parameters(), strict=True)
        ]
    )


def run(quick: bool) -> dict[str, Any]:
    rows = 2_000 if quick else 10_000
    repeats = 2 if quick else 3
    results: dict[str, Any] = {
        "batch_size": BATCH,
        "threads": 1,
        "rows": rows,
        "models": {},
    }
    for model in _models():
        base = in_child(measure, model=model, mode="none", rows=rows, repeats=repeats)
        correct = in_child(check_equal_updates, model=model)
        entry: dict[str, Any] = {"non_private": base, "modes": {}}
        for mode in (*MODES, FAST):
            try:
                got = in_child(
                    measure, model=model, mode=mode, rows=rows, repeats=repeats
                )
            except RuntimeError as exc:
                entry["modes"][mode] = {"error": str(exc)[:200]}
                continue
            got["ratio"] = round(
                got["seconds_per_epoch"] / got["non_private_seconds"], 2
            )
            got["matches_hooks"] = correct.get(mode)
            entry["modes"][mode] = got
            print(
                f"B1 {model:11s} {mode:9s} {got['ratio']:6.2f}x non-private "
                f"(peak {got['peak_rss_mb']:.0f} MB, correct={got['matches_hooks']})",
                flush=True,
            )
        ok = {m: v for m, v in entry["modes"].items() if v.get("matches_hooks")}
        entry["fastest_correct"] = min(ok, key=lambda m: ok[m]["ratio"]) if ok else None
        results["models"][model] = entry
    return results
