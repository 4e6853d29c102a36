"""Render docs/benchmarks.md (and the B4 plot) from benchmarks/results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import gpu
from benchmarks.model_use import render as _b9
from benchmarks.models_bench import render as _b11

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks-scale.png"


def _b1(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B1 DP-SGD cost (goal: <= 2x non-private on both MLP widths and the cnn)",
        "",
        f"Time per epoch of {b['rows']} rows, batch {b['batch_size']}, "
        f"{b['threads']} thread, private / non-private, same model and data; each "
        "private configuration in its own process (peak RSS is that process'), "
        "its epochs timed in turn with the non-private model's in that process "
        "(best of each: both see the same load on a shared machine). `fedvault` "
        "is the step a site runs: the book-keeping step for plain MLPs, the "
        "layer-wise step for `cnn` (fedvault's cnn as `--dataset digits --model "
        "cnn` builds it: GroupNorm, max-pooling, hidden 32); `cnn-digits` is a "
        "plainer conv net. *correct* = with noise 0 on one fixed batch, the update "
        "equals the `hooks` mode's.",
        "",
        "| model | mode | ratio | peak RSS MB | correct |",
        "|---|---|---:|---:|---|",
    ]
    for model, entry in b["models"].items():
        for mode, got in entry["modes"].items():
            if "error" in got:
                lines.append(f"| {model} | {mode} | error: {got['error']} | | |")
                continue
            lines.append(
                f"| {model} | {mode} | {got['ratio']:.2f}x | "
                f"{got['peak_rss_mb']:.0f} | {got['matches_hooks']} |"
            )
        lines.append(
            f"| {model} | *fastest correct* | **{entry['fastest_correct']}** | | |"
        )
    return lines


def _b2(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B2 framework overhead (goal: <= 1.15x)",
        "",
        f"`fedvault simulate` ({b['sites']} sites, {b['rounds']} rounds) against a "
        "plain "
        "one-process PyTorch FedAvg loop running the same trainer on the same "
        "partitions and evaluating the same test split each round. Start-up (Flower, "
        "Ray, imports, federated preprocessing) is reported on its own. `dp` and "
        "`no-dp` use the embedded data (~77 training rows a site: a round of local "
        "training takes milliseconds); `dp-large` a synthetic table of "
        f"{b.get('large_rows', '?')} rows, 30 features.",
        "",
        "| case | all rounds | rounds 2+ | start-up s | simulate acc. | plain acc. |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, c in b["cases"].items():
        lines.append(
            f"| {case} | {c['ratio_all_rounds']:.2f}x | "
            f"{c['ratio_steady_rounds']:.2f}x | "
            f"{c['simulation']['startup_seconds']:.1f} | "
            f"{c['simulation']['accuracy']:.3f} | {c['plain']['accuracy']:.3f} |"
        )
    return lines


def _b3(b: dict[str, Any], b2: dict[str, Any] | None = None) -> list[str]:
    federated = ""
    if b2 is not None and "per_round_seconds" in b:
        sim = b2["cases"]["dp"]["simulation"]
        round_s = sim["later_rounds_seconds"] / max(b2["rounds"] - 1, 1)
        federated = (
            f"- against a whole federated round of `fedvault simulate` (B2, DP, "
            f"{round_s:.2f} s): **{100 * b['per_round_seconds'] / round_s:.1f}%**"
        )
    return [
        "## B3 privacy bookkeeping (goal: <= 2% of round time)",
        "",
        f"One site of the default federation ({b['site']}), {b['rounds']} rounds, the "
        "ClientApp's own calls: policy, ledger (verify, durable append with fsync), "
        "noise planning (round 1) and epsilon, against the local DP-SGD training.",
        "",
        f"- share of the site's round time: **{100 * b['share_of_round_time']:.1f}%**",
        f"- bookkeeping {b['bookkeeping_seconds']:.2f} s in all, of which round 1 "
        f"(plans sigma) {b['first_round_bookkeeping_seconds']:.2f} s; local training "
        f"{b['training_seconds']:.2f} s in all",
        *([federated] if federated else []),
    ]


def _b4(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B4 scale",
        "",
        f"Synthetic 30-feature table, about 25 rows a site, {b['rounds']} rounds, 10 "
        "sites sampled a round (federated preprocessing queries every site once). "
        "Memory: the machine's used memory above idle (Ray workers included).",
        "",
        "| sites | s / round (2+) | first round s | start-up s | peak MB above idle |",
        "|---:|---:|---:|---:|---:|",
    ]
    for p in b["points"]:
        lines.append(
            f"| {p['sites']} | {p['later_round_seconds']:.2f} | "
            f"{p['first_round_seconds']:.1f} | {p['startup_seconds']:.1f} | "
            f"{p['peak_memory_above_idle_mb']:.0f} |"
        )
    if PLOT.exists():
        lines += ["", f"![growth]({PLOT.name})"]
    return lines


def _plot(b: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [p["sites"] for p in b["points"]]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(sites, [p["later_round_seconds"] for p in b["points"]], "o-")
    ax[0].set(
        xscale="log",
        xlabel="sites in the federation",
        ylabel="seconds / round",
        title="round time (10 sampled)",
    )
    ax[1].plot(
        sites, [p["startup_seconds"] for p in b["points"]], "o-", label="start-up s"
    )
    ax[1].plot(
        sites,
        [p["peak_memory_above_idle_mb"] / 100 for p in b["points"]],
        "s-",
        label="peak memory (100 MB)",
    )
    ax[1].set(
        xscale="log", xlabel="sites in the federation", title="start-up and memory"
    )
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _b5(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B5 wire size (goal: <= 1.05x plain, <= 0.27x with int8)",
        "",
        "The train reply a site sends per round (model ArrayRecord, or with "
        "`--compress int8` its packed update: one byte string of a float32 scale "
        "per tensor and every int8 code, shapes known from the global model; plus "
        "metrics), serialised with Flower's protobuf serde, against 4 bytes per "
        "parameter.",
        "",
        "| model | parameters | fp32 bytes | reply bytes | ratio | int8 reply bytes "
        "| int8 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in b["points"]:
        lines.append(
            f"| MLP 30-{p['hidden']}-1 | {p['parameters']} | {p['fp32_bytes']} | "
            f"{p['reply_bytes']} | {p['ratio']:.3f}x | {p['int8_reply_bytes']} | "
            f"{p['int8_ratio']:.3f}x |"
        )
    change = b["int8_accuracy"]
    lines += [
        "",
        "`--compress int8` (stochastic rounding, dequantized before "
        f"aggregation): test accuracy {change['accuracy_plain']:.4f} -> "
        f"{change['accuracy_int8']:.4f} ({change['change_points']:+.2f} points) "
        f"on the default federation, {change['rounds']} rounds, same seed.",
    ]
    return lines


def _b6(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B6 secure-aggregation cost",
        "",
        f"`fedvault simulate` on the embedded data, {b['rounds']} rounds, same seed; "
        "mean time of rounds 2+ with and without `--secagg` (SecAgg+ adds three "
        "message exchanges, key agreement and masking at every site).",
        "",
        "| sites | without | with SecAgg+ | ratio |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['sites']} | {p['plain_seconds']:.2f} s | "
        f"{p['secagg_seconds']:.2f} s | {p['ratio']:.2f}x |"
        for p in b["points"]
    ]
    return lines


def _b7(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B7 vault cost",
        "",
        "`benchmarks/vault_bench.py`: a synthetic raw export, imported into a vault "
        "(validate, anonymize, measure, encrypt), then read back; each phase in its "
        "own process.",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in b.items() if k != "command"]
    return lines


def _b8(b: dict[str, Any]) -> list[str]:
    lines = [
        "## B8 deployment round latency (goal: <= 2x simulation)",
        "",
        f"{b['sites']} sites and a coordinator as real processes on one machine "
        "(`fedvault server start`, `fedvault client start`: Flower SuperLink and "
        "SuperNodes over TLS with site authentication, on 127.0.0.1), against "
        f"`fedvault simulate --sites {b['sites']}` on the same partitions, test "
        f"split, model and DP-SGD settings; {b['rounds']} rounds each, round times "
        "from each run's own progress events. `fork`: fedvault's default site "
        "runtime (`fedvault.client.runtime`: a launcher that imports the ClientApp "
        "once and forks a process per message; shorter Flower waits); `subprocess`: "
        "Flower's own launcher, a fresh interpreter per message, with Flower's "
        "waits (the coordinator's shorter reply polling applies to both); "
        "`fork-secagg`: the default with SecAgg+ (three more exchanges a round), "
        "against the same simulation in the clear. Accuracies differ because a "
        "deployed site draws its DP noise seed from the OS, not from the run's "
        "seed (docs/privacy.md, Randomness).",
        "",
        "| run | round 1 s | rounds 2+ s (mean) | all rounds s | all rounds ratio "
        "| rounds 2+ ratio | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sim = b["simulation"]
    rows = [("simulation", sim)] + [
        (f"deployment ({k})", b[k])
        for k in ("fork", "subprocess", "fork-secagg")
        if k in b
    ]
    for label, r in rows:
        ratio_all = r.get("ratio_all_rounds", 1.0)
        ratio_later = r.get("ratio_later_rounds", 1.0)
        lines.append(
            f"| {label} | {r['round_seconds'][0]:.2f} | {r['later_round_mean']:.2f} | "
            f"{r['all_rounds_seconds']:.2f} | {ratio_all:.2f}x | "
            f"{ratio_later:.2f}x | {r['accuracy']:.3f} |"
        )
    return lines


def _verdict(name: str, benches: dict[str, Any]) -> str:
    """Goal met or missed, and by how much (the issue's goals)."""
    b = benches[name]
    if name == "B1":
        ratios = {
            m: b["models"][m]["modes"]["fedvault"].get("ratio", float("inf"))
            for m in ("mlp-128", "mlp-512", "cnn")
            if m in b["models"]
        }
        worst = max(ratios.values())
        met = "met" if worst <= 2 else f"missed by {worst - 2:.2f}x"
        each = ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items())
        return (
            f"**Goal <= 2x on both MLP widths and the cnn: {met}** ({each}; "
            "fedvault's own steps, what the sites run: book-keeping for plain "
            "MLPs, layer-wise for the cnn and MLPs with momentum; Opacus' engine "
            "for other models and with augmentation). "
            "Opacus' `ghost` mode gives a different update for the MLPs: their "
            "single-logit BCE loss has shape (n, 1), which its per-sample loss "
            "handling does not expect."
        )
    if name == "B2":
        parts = [
            f"{case} {c['ratio_steady_rounds']:.2f}x" for case, c in b["cases"].items()
        ]
        return (
            "**Goal <= 1.15x: missed on the tiny embedded data, where a round of "
            "local training takes milliseconds and Flower's fixed cost per round "
            "(messages, two exchanges, evaluation; ~0.3 s) dominates** — rounds 2+: "
            + ", ".join(parts)
            + ". The gap shrinks as local training gets real work (`dp-large`), "
            "but a fixed ~0.2-0.3 s of Flower per round remains; not yet tried: "
            "evaluating on the sites only every few rounds (each round now has a "
            "training and an evaluation exchange)."
        )
    if name == "B3":
        return (
            "**Goal <= 2%: missed against the site's own local training (its "
            "durable ledger append with fsync costs ~4 ms, training a few "
            "milliseconds); met against the federated round.** Tried: cached "
            "per-step RDP curves (same Opacus maths), sigma planned once per run "
            "with a coarse-then-exact search, epsilon from the ledger's grouped "
            "history."
        )
    if name == "B5":
        worst = max(p["ratio"] for p in b["points"])
        worst8 = max(p["int8_ratio"] for p in b["points"])
        change = abs(b["int8_accuracy"]["change_points"])
        plain = (
            "met" if worst <= 1.05 else f"missed by {100 * (worst - 1.05):.1f} points"
        )
        int8 = (
            "met" if worst8 <= 0.27 else f"missed by {100 * (worst8 - 0.27):.1f} points"
        )
        acc = "met" if change <= 0.5 else f"missed ({change:.2f} points)"
        return (
            f"**Goal <= 1.05x plain: {plain}** (worst {worst:.3f}x: the metrics and "
            f"array headers are a fixed ~900 bytes). **Goal <= 0.27x int8: {int8}** "
            f"(worst {worst8:.3f}x; one packed array instead of two per tensor "
            "saves Flower's ~180-byte header per array). **Accuracy within 0.5 "
            f"points: {acc}.**"
        )
    if name == "B8":
        fork = b["fork"]
        worst = max(fork["ratio_all_rounds"], fork["ratio_later_rounds"])
        met = "met" if worst <= 2 else f"missed ({worst:.2f}x against 2x)"
        before = ""
        if "subprocess" in b:
            sub = b["subprocess"]
            before = (
                f" With Flower's own launcher and waits a round takes "
                f"{sub['later_round_mean']:.1f} s "
                f"({sub['ratio_later_rounds']:.0f}x the simulation)."
            )
        return (
            f"**Goal <= 2x: {met}** (fedvault's default: all rounds "
            f"{fork['ratio_all_rounds']:.2f}x, rounds 2+ "
            f"{fork['ratio_later_rounds']:.2f}x)." + before + " Done: the "
            "ClientApp imported once per site, not per message (forked launcher); "
            "Opacus' per-step RDP curve kept beside the ledger instead of "
            "recomputed by every process (~0.4 s a round); Flower's fixed waits "
            "shortened (coordinator reply polling 3 s -> 20-100 ms, a SuperNode's "
            "idle poll 3 s -> `poll-interval` 0.25 s, object retries 1-10 s -> "
            "20-500 ms). What remains is message transport: each exchange moves "
            "every message object by its own TLS gRPC call through the SuperLink's "
            "state database, twice per round (train and evaluate), with a dozen "
            "processes sharing 2 cores; a simulated round is in-memory calls."
        )
    return ""


SECTIONS = {
    "B1": _b1,
    "B2": _b2,
    "B3": _b3,
    "B4": _b4,
    "B5": _b5,
    "B6": _b6,
    "B7": _b7,
    "B8": _b8,
    "B9": _b9,
    "B10": gpu.render,
    "B11": _b11,
}


def write(results: dict[str, Any]) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/report.py` from `benchmarks/results.json`; rerun "
        "with "
        "the command shown. Figures are side-by-side ratios measured in one run.",
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, torch "
        f"{m['torch']}, Opacus {m['opacus']}, Flower {m['flwr']}, CUDA: {m['cuda']}. "
        f"Date: {results['date']}.",
        "",
    ]
    benches = results["benchmarks"]
    if "B4" in benches:
        _plot(benches["B4"])
    for name, render in SECTIONS.items():
        if name not in benches:
            continue
        if name == "B3":
            lines += _b3(benches["B3"], benches.get("B2"))
        else:
            lines += render(benches[name])
        verdict = _verdict(name, benches)
        lines += ["", *([verdict, ""] if verdict else [])]
        lines += [f"Command: `{benches[name]['command'].strip()}`", ""]
    DOC.write_text("\n".join(lines).rstrip() + "\n")
