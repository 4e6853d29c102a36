"""B10: DP-SGD on a CUDA GPU — ResNet-18 and the small CNN, private / non-private.

Two parts, each on ``cuda:0`` when CUDA is there (else the case says so and
records nothing):

* **speed**: fedvault's ``resnet18`` (GroupNorm, 3x32x32 inputs, 10 classes) and
  ``cnn`` (1x8x8) through Opacus 1.6 in each grad-sample mode; a fixed batch
  (``poisson_sampling=False`` so every step has the same size), data already on the
  GPU, ``_sync()`` around the timed steps; samples/s and the
  private / non-private time ratio per step;
* **training**: one site (central, not federated) trains each model on
  scikit-learn's digits (1,797 real 8x8 images, 80/20 split, resized to 32x32 for
  ResNet-18) with DP-SGD planned by Opacus for epsilon = 3 at delta = 1e-5 (RDP
  accountant), and without DP; test accuracy and seconds.

Run on a machine with a GPU: ``python -m benchmarks --only B10`` (or
``python -m benchmarks.gpu OUT.json`` where Flower is not installed).
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import time
import warnings
from typing import Any

MODES = ("hooks", "ew", "functorch", "ghost")
EPSILON, DELTA = 3.0, 1e-5
DEVICE = "cuda"  # benchmarks/test_gpu.py dry-runs this module on "cpu"


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def facts() -> dict[str, Any]:
    """The GPU machine's facts (no Flower needed)."""
    import opacus
    import torch

    return {
        "gpu": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "python": platform.python_version(),
    }


def _model(name: str) -> Any:
    from fedvault.common.model_zoo import InputSpec, prepare_for_dp, resnet18, small_cnn

    if name == "resnet18":
        model = resnet18(InputSpec.image(3, 32, 32), 10)
    else:
        model = small_cnn(InputSpec.image(1, 8, 8), 10)
    return prepare_for_dp(model)[0]


def _private(
    model: Any, data: Any, batch: int, mode: str, sigma: float, epochs: int = 1
) -> tuple[Any, Any, Any, Any]:
    """Opacus' make_private; returns (model, optimizer, criterion, loader)."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    if mode == "none":
        return model, optimizer, criterion, loader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            grad_sample_mode=mode,
            poisson_sampling=False,
        )
    if mode == "ghost":
        return wrapped[0], wrapped[1], wrapped[2], wrapped[3]
    return wrapped[0], wrapped[1], criterion, wrapped[2]


def speed(name: str, batch: int, steps: int = 20) -> dict[str, Any]:
    """Samples/s per mode and the ratio to non-private, same model and batch."""
    import torch
    from torch.utils.data import TensorDataset

    shape = (3, 32, 32) if name == "resnet18" else (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * (steps + 3), *shape, generator=g).to(DEVICE)
    y = torch.randint(0, 10, (len(x),), generator=g).to(DEVICE)
    data = TensorDataset(x, y)
    out: dict[str, Any] = {"batch": batch, "steps": steps, "modes": {}}
    for mode in ("none", *MODES):
        torch.manual_seed(0)
        try:
            model, opt, crit, loader = _private(
                _model(name).to(DEVICE), data, batch, mode, 1.0
            )
            batches = list(loader)
            for xb, yb in batches[:3]:  # warm-up
                _step(model, opt, crit, xb, yb)
            _sync()
            start = time.perf_counter()
            for xb, yb in batches[3 : 3 + steps]:
                _step(model, opt, crit, xb, yb)
            _sync()
            seconds = (time.perf_counter() - start) / steps
            out["modes"][mode] = {
                "seconds_per_step": seconds,
                "samples_per_s": batch / seconds,
                "peak_gpu_mb": _peak_mb(),
            }
        except Exception as exc:  # one mode failing must not lose the others
            out["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        model = opt = crit = loader = batches = None
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    base = out["modes"]["none"].get("seconds_per_step")
    for mode in MODES:
        r = out["modes"][mode]
        if base and "seconds_per_step" in r:
            r["ratio"] = r["seconds_per_step"] / base
    return out


def _peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else 0.0


def _step(model: Any, opt: Any, crit: Any, x: Any, y: Any) -> None:
    opt.zero_grad()
    loss = crit(model(x), y)
    loss.backward()
    opt.step()


def _digits(name: str) -> tuple[Any, Any]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.nn.functional import interpolate
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x / 16.0, y, test_size=0.2, random_state=0, stratify=y
    )

    def images(a: Any) -> Any:
        t = torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)
        t = (t - 0.5) / 0.5
        if name == "resnet18":
            t = interpolate(t, size=(32, 32), mode="bilinear").repeat(1, 3, 1, 1)
        return t.to(DEVICE)

    return (
        TensorDataset(images(xtr), torch.tensor(ytr).to(DEVICE)),
        TensorDataset(images(xte), torch.tensor(yte).to(DEVICE)),
    )


def train(name: str, *, dp: bool, lr: float, epochs: int, batch: int) -> dict[str, Any]:
    """Central training on digits; DP planned by Opacus for (EPSILON, DELTA)."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    train_set, test_set = _digits(name)
    model = _model(name).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    loader = DataLoader(train_set, batch_size=batch, shuffle=True)
    engine = None
    if dp:
        engine = PrivacyEngine(accountant="rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, optimizer, loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                target_epsilon=EPSILON,
                target_delta=DELTA,
                epochs=epochs,
                max_grad_norm=1.0,
                grad_sample_mode="functorch",
            )
    _sync()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            if len(y):
                _step(model, optimizer, criterion, x, y)
    _sync()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        accuracy = float((model(x).argmax(1) == y).float().mean())
    result = {"dp": dp, "lr": lr, "epochs": epochs, "batch": batch}
    result |= {"accuracy": accuracy, "seconds": seconds}
    if engine is not None:
        result["epsilon"] = engine.get_epsilon(DELTA)
        result["noise_multiplier"] = optimizer.noise_multiplier
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """The B10 case; without CUDA it records why nothing was measured."""
    import torch

    from fedvault.common.model_zoo import InputSpec, describe_small_cnn

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on the machine that ran it"}
    out: dict[str, Any] = {"machine": facts(), "speed": {}, "training": []}
    # The cnn's shape as this run builds it; a result without it measured the cnn
    # before December 2026 (two conv blocks and a dense hidden layer).
    out["cnn_shape"] = describe_small_cnn(InputSpec.image(1, 8, 8), 32)
    for name, batch in (("resnet18", 256), ("cnn", 256)):
        out["speed"][name] = speed(name, batch)
        print(name, json.dumps(out["speed"][name]), flush=True)
    grid = {"cnn": (0.03, 0.1, 0.3), "resnet18": (0.02, 0.05, 0.1)}
    for name, lrs in grid.items():
        for dp in (False, True):
            for lr in lrs if dp else (0.05,):
                epochs = 30 if name == "cnn" else 60
                res = train(name, dp=dp, lr=lr, epochs=epochs, batch=256)
                out["training"].append({"model": name} | res)
                print(json.dumps(out["training"][-1]), flush=True)
    return out


if __name__ == "__main__":
    result = run()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


_OLD_CNN = (
    "the cnn as it was when this was measured, two conv blocks (16, 32 channels) "
    "and a dense hidden layer of 32 (since December 2026 the cnn takes one block "
    "on 8x8 images and no dense layer: docs/models.md)"
)


def render(b: dict[str, Any]) -> list[str]:
    """docs/benchmarks.md's B10 section."""
    lines = ["## B10 DP-SGD on a CUDA GPU (ResNet-18 and the small CNN)", ""]
    if "skipped" in b:
        return [*lines, f"Not measured: {b['skipped']}."]
    m = b["machine"]
    lines += [
        f"GPU: {m['gpu']}, CUDA {m['cuda']}, torch {m['torch']}, Opacus "
        f"{m['opacus']}, Python {m['python']}. Central training (one site, no "
        "Flower): fedvault's models under Opacus' own engine. The cnn on 8x8 "
        "digits: " + b.get("cnn_shape", _OLD_CNN) + ".",
        "",
        "| model | batch | mode | ms/step | samples/s | x non-private | peak GPU MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in b["speed"].items():
        for mode, r in s["modes"].items():
            if "error" in r:
                lines.append(f"| {name} | {s['batch']} | {mode} | {r['error']} |||")
                continue
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "1.00x"
            lines.append(
                f"| {name} | {s['batch']} | {mode} | {1000 * r['seconds_per_step']:.1f}"
                f" | {r['samples_per_s']:,.0f} | {ratio} | {r['peak_gpu_mb']:,.0f} |"
            )
    lines += ["", _best(b["speed"])]
    lines += [
        "",
        f"Digits (1,797 8x8 images, 80/20 split), epsilon {EPSILON:g} at delta "
        f"{DELTA:g} (Opacus' RDP accountant, functorch mode), SGD momentum 0.9:",
        "",
        "| model | DP | lr | epochs | sigma | epsilon | test accuracy | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in b["training"]:
        sigma = f"{t['noise_multiplier']:.2f}" if t["dp"] else "-"
        eps = f"{t['epsilon']:.2f}" if t["dp"] else "-"
        lines.append(
            f"| {t['model']} | {'yes' if t['dp'] else 'no'} | {t['lr']:g} | "
            f"{t['epochs']} | {sigma} | {eps} | {t['accuracy']:.3f} | "
            f"{t['seconds']:.1f} |"
        )
    return lines + _sites(b.get("sites"))


def _sites(sites: dict[str, Any] | None) -> list[str]:
    """The second part (benchmarks/gpu_sites.py): the sites' own DP-SGD on CUDA."""
    if not sites:
        return []
    lines = [
        "",
        "fedvault's own site training step (`train_private`, the path a site runs) "
        "on the GPU and on the same machine's 16 CPU cores: 5 sites in one process, "
        "IID shares of digits, FedAvg by rows, no Flower transport; sigma planned "
        "by fedvault for epsilon 3 at delta 1e-5 over the DP-SGD steps alone (a "
        "`fedvault simulate` run also spends part of its epsilon on the summary):",
        "",
        "| model | device | rounds | lr | sigma | test accuracy | first round s "
        "| later rounds s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sites["runs"]:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['rounds']} | {r['lr']:g} | "
            f"{r['sigma'][0]:.2f} | {r['accuracy']:.3f} | {r['first_round_s']:.2f} | "
            f"{r['later_round_s']:.2f} |"
        )
    return [*lines, "", f"Command: `{sites['command']}`"]


def _best(speed: dict[str, Any]) -> str:
    parts = []
    for name, s in speed.items():
        timed = {m: r for m, r in s["modes"].items() if "ratio" in r}
        if timed:
            mode = min(timed, key=lambda m: timed[m]["ratio"])
            r = timed[mode]
            parts.append(
                f"{name} {r['ratio']:.2f}x ({mode}, {r['samples_per_s']:,.0f} "
                "samples/s private)"
            )
    return (
        "Fastest private mode per model, time per step against non-private: "
        + "; ".join(parts)
        + ". On this GPU the non-private step is so short that per-sample "
        "gradient work dominates; the ratios move by a few tenths between runs."
    )
