"""What each setting means: the one text ``--help`` and docs/operations.md show.

One table per settings file, keyed by the setting's TOML key (kebab-case), in the
order of the dataclass that parses it: :data:`TRAINING`
(:class:`fedvault.common.config.TrainingConfig`, ``[training]`` and ``fedvault
simulate``), :data:`COORDINATOR` (``[coordinator]`` of ``coordinator.toml``),
:data:`SITE` (``[site]`` of ``site.toml``) and :data:`SIMULATION` (``fedvault
simulate``'s own settings). Defaults are not written here: they are the
dataclasses' (:func:`default_text`). ``scripts/gen-settings-doc`` writes the
tables of docs/operations.md ("Every setting") from these texts and the defaults,
and ``tests/integration/test_settings_documented.py`` checks that every key has a
text, and that the docs and simulate's ``--help`` say the same.

A text is Markdown (a value is written as code, in backticks); :func:`option_help`
makes it the help of a command-line option.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from rich.markup import escape


class Meaning(NamedTuple):
    """A setting's meaning; ``note`` follows its default in the docs' table."""

    text: str
    note: str = ""


TRAINING: dict[str, Meaning] = {
    "rounds": Meaning("federated rounds"),
    "local-epochs": Meaning("local epochs per round"),
    "batch-size": Meaning("expected (Poisson) batch size"),
    "lr": Meaning("local SGD learning rate"),
    "momentum": Meaning(
        "local SGD momentum (0: plain SGD; plain MLPs keep fedvault's fast DP-SGD "
        "step only at 0)"
    ),
    "strategy": Meaning(
        "`fedavg`, `fedprox`, `fedadam`, `fedmedian`, `fedtrimmedavg`, `krum`, "
        "`multikrum`, `bulyan`"
    ),
    "proximal-mu": Meaning('FedProx\'s proximal term (with `strategy = "fedprox"`)'),
    "malicious-sites": Meaning("sites `krum`, `multikrum` and `bulyan` must tolerate"),
    "trim-fraction": Meaning("share `fedtrimmedavg` trims at each end"),
    "fraction-train": Meaning("share of sites sampled per round"),
    "min-sites": Meaning("fewest sites a round needs"),
    "model": Meaning(
        "`mlp`, `logreg`, `cnn`, `resnet18` or a plug-in `package.module:factory` "
        "(docs/models.md)"
    ),
    "hidden": Meaning(
        "width of the MLP's hidden layer; the cnn's conv channels (half of it in "
        "the first block, all of it in the second, at most 32)"
    ),
    "features": Meaning(
        "the feature columns the sites train on and summarize, besides the target "
        "(docs/governance.md)",
        note="(every column)",
    ),
    "task": Meaning("`auto` (from the target), `classification` or `regression`"),
    "regression-loss": Meaning(
        "a regression's loss: `mse`, or `huber` (delta 1 on the standardized "
        "target: squared below 1, linear above; less pulled by outliers); unused "
        "when the target is a class label"
    ),
    "device": Meaning(
        "where a site trains: `auto`, `cpu` or `cuda` (a site without a GPU "
        "declines `cuda`)"
    ),
    "augment-rotation": Meaning(
        "images: random rotation, degrees (inside DP-SGD, per sample)"
    ),
    "augment-crop": Meaning("images: random crop after this much padding, pixels"),
    "augment-copies": Meaning(
        "images: augmentation multiplicity K (gradients of K copies averaged "
        "before clipping; no extra epsilon)"
    ),
    "seed": Meaning("seed of partitioning, initialization and (simulation) training"),
    "dp": Meaning(
        "sample-level DP-SGD at the sites (`false`: only where a site's policy "
        "allows it)"
    ),
    "epsilon": Meaning("each site's epsilon target for this run"),
    "delta": Meaning("delta the run asks for (a site accounts with its own policy's)"),
    "max-grad-norm": Meaning("per-sample clipping norm"),
    "noise-multiplier": Meaning(
        "a fixed noise multiplier for every site; 0: each site plans it"
    ),
    "accountant": Meaning("`rdp` or `prv`"),
    "round-timeout": Meaning(
        "seconds a round waits for replies; also how long to wait for sites"
    ),
    "client-dp": Meaning(
        "client-level DP: `off`, `server-fixed`, `client-fixed`, `server-adaptive`, "
        "`client-adaptive`"
    ),
    "client-noise-multiplier": Meaning("client-level noise multiplier"),
    "client-clipping-norm": Meaning(
        "client-level clipping norm (initial, adaptive modes)"
    ),
    "client-delta": Meaning("delta of the client-level guarantee"),
    "secagg": Meaning("Flower's SecAgg+: the coordinator sees only the sum"),
    "compress": Meaning("`none` or `int8` (quantized updates on the wire)"),
}

COORDINATOR: dict[str, Meaning] = {
    "run-dir": Meaning("the run folder: `state.db`, `sites.json`, logs, `output/`"),
    "fleet-address": Meaning("Flower's Fleet API: the only port partners reach"),
    "control-address": Meaning("Flower's Control API: loopback or private only"),
    "certs": Meaning("folder of `ca.crt`, `server.crt`, `server.key`"),
    "expected-sites": Meaning(
        "sites to wait for before round 1", note="(then `min-sites`)"
    ),
    "target": Meaning("the label column"),
    "test-data": Meaning(
        "a held-out file for central evaluation (an image run: also a folder per "
        "class or a manifest of images)"
    ),
    "timeout": Meaning("whole-run limit, seconds"),
    "client-threads": Meaning(
        "torch threads per site ClientApp process (0: torch's default)"
    ),
    "health-address": Meaning(
        "loopback address of the health endpoint (`GET /health`)", note="(off)"
    ),
    "init-model": Meaning(
        "a model file (or run folder) round 1 starts from, instead of a fresh model"
    ),
    "insecure": Meaning(
        "no TLS, no site authentication (tests on one machine only); or "
        "`--insecure` on `server start` / `resume`"
    ),
}

SITE: dict[str, Meaning] = {
    "name": Meaning("the site's name in its logs and replies"),
    "coordinator": Meaning(
        "the coordinator's Fleet address, as its certificate names it"
    ),
    "vault": Meaning("an encrypted vault (`fedvault data import`); or `data`"),
    "key-file": Meaning("the vault's key (with `vault`)"),
    "data": Meaning("a plain CSV/Parquet file instead of a vault"),
    "schema": Meaning(
        "with `data`: a schema contract whose bounds and label classes the site "
        "declares (docs/privacy.md); a vault keeps its own"
    ),
    "ca-certificate": Meaning(
        "the consortium's `ca.crt`", note="(required unless `insecure`)"
    ),
    "private-key": Meaning(
        "the site's `site.key` (mode 0600)", note="(required unless `insecure`)"
    ),
    "state-dir": Meaning("ledger, logs, answers, Flower's home"),
    "runtime-address": Meaning(
        "the local ClientApp API (loopback; one per site on a host)"
    ),
    "max-retries": Meaning(
        "retries per outage after the first connection attempt (0: no limit)"
    ),
    "max-wait-time": Meaning("seconds of trying per outage (0: no limit)"),
    "policy": Meaning("a policy file instead of the `[privacy]` table"),
    "insecure": Meaning(
        "no TLS, no site key (tests on one machine only); or `--insecure` on "
        "`client start`"
    ),
    "poll-interval": Meaning("seconds between asks for work when idle"),
    "isolation": Meaning("`fork` (fedvault's launcher) or `subprocess` (Flower's own)"),
}

SIMULATION: dict[str, Meaning] = {
    "sites": Meaning("number of simulated sites"),
    "partition": Meaning("`iid`, `dirichlet:ALPHA` or `column:NAME`"),
    "data": Meaning(
        "CSV or Parquet table, image folder (one folder per class; PNG, JPEG, "
        "DICOM) or image manifest (path column) (empty: the embedded data)"
    ),
    "target": Meaning("label column of the data"),
    "test-share": Meaning("share of the rows held out for central evaluation"),
    "out": Meaning("run folder (empty: `fedvault-runs/sim-TIME`)"),
    "vaults": Meaning(
        "comma-separated site vaults (from `fedvault data import`), one simulated "
        "site each; with `--key` and `--target`"
    ),
    "key": Meaning("key file of the vaults given with `--vaults`"),
    "state": Meaning(
        "folder of the simulated sites' state (ledgers, policies); run again on "
        "it to continue from the remaining budgets (empty: temporary)"
    ),
    "site-budget": Meaning(
        "lifetime epsilon written into new site policies (0: `epsilon`)"
    ),
    "timeout": Meaning("whole-run limit, seconds"),
    "init-model": Meaning("start from this model (file or run folder)"),
    "dataset": Meaning(
        "embedded data (empty: `breast-cancer`, a table; `digits`: 8x8 images)"
    ),
    "image-size": Meaning(
        "image files (`--data`) are resized to SIZE x SIZE (0: 64); "
        "`--dataset digits` stays 8 x 8"
    ),
    "gpu-fraction": Meaning("share of a GPU per simulated site (0: none)"),
}


def value_text(value: object) -> str:
    """A value as TOML writes it (``true``, ``1e-5``, ``["a"]``); ``empty`` for
    ``""`` or an empty list."""
    if value == "" or value == () or value == []:
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value).replace("e-0", "e-")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return str(value)


def default_of(field: dataclasses.Field[Any]) -> Any:
    """A field's default (made by its factory, if it has one), or MISSING."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def default_text(field: dataclasses.Field[Any]) -> str:
    """A field's default as the docs' tables write it: ``(required)`` for none."""
    value = default_of(field)
    if value is dataclasses.MISSING:
        return "(required)"
    text = value_text(value)
    return text if text == "empty" else f"`{text}`"


def plain(text: str) -> str:
    """Markdown text as ``--help`` shows it: backticks removed, square brackets
    kept from the help's console markup (``[privacy]`` stays)."""
    return escape(text.replace("`", ""))


def option_help(meaning: Meaning, default: str, *, prefix: str = "") -> str:
    """The help of a command-line option: ``prefix``, the meaning (plain text) and
    ``(default: DEFAULT)``, unless the meaning says what its empty or 0 default
    does."""
    text = prefix + plain(meaning.text)
    if default in ("empty", "0", "0.0") and f"({default.split('.')[0]}: " in text:
        return f"{text}."
    return f"{text} (default: {default})."


def keys_epilog(cls: type, meanings: dict[str, Meaning], table: str, *more: str) -> str:
    """A command's ``--help`` epilog: every key of ``table`` (parsed by the
    dataclass ``cls``) with its default and meaning, one paragraph each, then
    ``more`` paragraphs."""
    lines = [escape(f"Keys of {table} (docs/operations.md, Every setting):")]
    for field in dataclasses.fields(cls):
        key = field.name.replace("_", "-")
        meaning = meanings[key]
        default = plain(" ".join(filter(None, (default_text(field), meaning.note))))
        lines.append(f"{key} = {default}: {plain(meaning.text)}")
    return "\n\n".join([*lines, *map(escape, more)])
