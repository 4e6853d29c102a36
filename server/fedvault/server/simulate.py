"""``fedvault simulate``: a whole federation on one machine, on Flower's simulation
runtime, with the same ServerApp and ClientApp a real deployment runs.

The launcher only prepares files (one data file per simulated site, a held-out test
file for central evaluation — or, with ``--vaults``, each site's own encrypted vault
and no central data at all) and starts Flower; sites and coordinator then exchange
nothing but Flower messages: summary counts, model weights and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedvault.common.config import TrainingConfig, key_of, parse_fields
from fedvault.common.data import DEFAULT_TARGET
from fedvault.common.errors import ConfigError, DataError, FederationError
from fedvault.common.image_table import ImageShape
from fedvault.common.partition import (
    VALIDATION_FROM_ROWS,
    PartitionSpec,
    hold_out,
    partition_table,
    too_small,
    validation_rows,
)
from fedvault.common.processes import free_port
from fedvault.common.protocol import simulated_site_key
from fedvault.server import _flower, lineage
from fedvault.server import _vaults as _vaults_mod
from fedvault.server import simulate_data as _data
from fedvault.server.rundir import (
    SUMMARY_FILE,
    check_new_run_dir,
    last_error,
    mark_interrupted,
)
from fedvault.server.settings import ServerSettings
from fedvault.server.site_names import check_states, seed_used_before, site_states

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SimulationOptions:
    """Settings of the simulated federation itself (not of training)."""

    sites: int = 5
    partition: str = "iid"
    data: str = ""
    target: str = DEFAULT_TARGET
    test_share: float = 0.2
    out: str = ""
    vaults: str = ""
    key: str = ""
    state: str = ""
    site_budget: float = 0.0
    timeout: float = 3600.0
    init_model: str = ""
    dataset: str = ""  # embedded: breast-cancer (the default) or digits
    image_size: int = 0  # images resized to this (0: 64)
    gpu_fraction: float = 0.0  # share of a GPU per simulated site

    def __post_init__(self) -> None:
        if self.sites < 1:
            raise ConfigError(f"sites: must be >= 1, got {self.sites}")
        if not 0 < self.test_share < 1:
            raise ConfigError(f"test-share: must be in (0, 1), got {self.test_share}")
        if self.vaults and self.data:
            raise ConfigError("vaults: give either --vaults or --data, not both")
        if self.vaults and not self.key:
            raise ConfigError("key: --vaults needs --key KEYFILE (the vaults' key)")
        if self.site_budget < 0:
            raise ConfigError(f"site-budget: must be >= 0, got {self.site_budget}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout: must be > 0, got {self.timeout}")
        if not 0 <= self.gpu_fraction <= 1 or self.image_size < 0:
            raise ConfigError("gpu-fraction: must be in [0, 1]; image-size >= 0")
        PartitionSpec.parse(self.partition)


@dataclass(frozen=True)
class SimulationConfig:
    """The simulated federation and its training settings. ``delta_given``: the
    user set delta; otherwise :func:`prepare_data` settles it from the site sizes."""

    options: SimulationOptions
    training: TrainingConfig
    delta_given: bool


def load_config(values: Mapping[str, Any]) -> SimulationConfig:
    """Split one flat kebab-case mapping (TOML file + flags) and validate it;
    ``--model cnn`` starts from the cnn's own defaults (``CNN_DEFAULTS``)."""
    if values.get("model") == "cnn":
        values = _data.CNN_DEFAULTS | dict(values)
    sim_keys = {key_of(f.name) for f in dataclasses.fields(SimulationOptions)}
    train_keys = {key_of(f.name) for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - sim_keys - train_keys)
    if unknown:
        raise ConfigError(f"config: unknown key {unknown[0]!r}")
    options = parse_fields(
        SimulationOptions,
        {k: v for k, v in values.items() if k in sim_keys},
        source="config",
    )
    training = parse_fields(
        TrainingConfig,
        {k: v for k, v in values.items() if k in train_keys},
        source="config",
    )
    return SimulationConfig(options, training, delta_given="delta" in values)


@dataclass(frozen=True)
class PreparedData:
    """Per site either rows (written to a file for it) or its encrypted vault, and
    the run's configuration with delta settled for these sites (the one the run
    uses from here on)."""

    sites: list[tuple[str, pd.DataFrame | Path]]
    test: pd.DataFrame | None
    excluded: dict[str, str]
    config: SimulationConfig
    rows: tuple[int, ...] = ()  # of each site, as its manifest or partition says
    image_shape: ImageShape | None = None  # (c, h, w) when the rows are images

    @property
    def training(self) -> TrainingConfig:
        return self.config.training

    @property
    def options(self) -> SimulationOptions:
        return self.config.options


def _vaults(cfg: SimulationConfig) -> PreparedData:
    """One simulated site per vault. The launcher never decrypts a vault: each site
    opens its own with the key file, and refuses (clearly) a wrong key or a tampered
    vault. With vaults there is no central test split (the coordinator holds no
    data): the model is evaluated on the sites' own validation splits."""
    key = Path(cfg.options.key)
    if not key.is_file():
        raise ConfigError(f"key: key file not found: {key}")
    sites: list[tuple[str, pd.DataFrame | Path]] = []
    for text in cfg.options.vaults.split(","):
        vault = Path(text.strip())
        if not (vault / "manifest.fvm").is_file():
            raise ConfigError(f"vaults: {vault} is not a fedvault data vault")
        sites.append((vault.resolve().name, vault.resolve()))
    if len({name for name, _ in sites}) != len(sites):
        raise ConfigError("vaults: two vaults share a folder name; rename one")
    paths = [path for _, path in sites if isinstance(path, Path)]
    facts = _vaults_mod.vault_facts(paths, key)
    target = _vaults_mod.vault_target(
        {str(p): t for p, (_, t) in zip(paths, facts, strict=True)},
        given=cfg.options.target,
        default=DEFAULT_TARGET,
    )
    cfg = dataclasses.replace(
        cfg, options=dataclasses.replace(cfg.options, target=target)
    )
    if cfg.delta_given and cfg.training.dp:
        # every site also refuses, itself, a delta not below 1/n of its rows
        _data.with_delta(cfg, max(rows for rows, _ in facts))
    rows = tuple(rows for rows, _ in facts)
    _data.warn_weak_delta(cfg, rows)
    return PreparedData(sites=sites, test=None, excluded={}, config=cfg, rows=rows)


def prepare_data(cfg: SimulationConfig) -> PreparedData:
    """Load, check, hold out a test split and partition; raises before writing."""
    opts = cfg.options
    if opts.vaults:
        return _vaults(cfg)
    spec = PartitionSpec.parse(opts.partition)
    column = [spec.column] if spec.kind == "column" else []
    frame, training, shape = _data.prepare_source(
        opts, cfg.training, text_columns=column
    )
    cfg = dataclasses.replace(cfg, training=training)
    if spec.kind != "column" and opts.sites > len(frame):
        raise ConfigError(f"sites: {opts.sites} sites but only {len(frame)} rows")
    test, rest = hold_out(frame, opts.target, opts.test_share, cfg.training.seed)
    parts = partition_table(
        rest, spec, num_sites=opts.sites, target=opts.target, seed=cfg.training.seed
    )
    excluded = {name: "no rows" for name, part in parts if part.empty}
    sites: list[tuple[str, pd.DataFrame | Path]] = [
        (name, part) for name, part in parts if not part.empty
    ]
    if not sites:
        raise DataError("no site received any rows")
    settled = _data.with_delta(cfg, max(len(p) for _, p in parts))
    rows = tuple(len(part) for _, part in parts if not part.empty)
    _data.warn_weak_delta(cfg, rows)
    return PreparedData(
        sites=sites,
        test=test,
        excluded=excluded,
        config=settled,
        rows=rows,
        image_shape=shape,
    )


def check_sizes(prepared: PreparedData) -> None:
    """Refuse, before Flower starts, sites too small for any round to run: fewer
    than ``min-sites`` of them would hold the training rows a site needs to train
    (:func:`~fedvault.common.partition.too_small`); warns when the model could not
    be evaluated at all. Raises :class:`ConfigError`."""
    need = prepared.training.min_sites
    able = sum(not too_small(rows) for rows in prepared.rows)
    if prepared.test is None and not any(validation_rows(n) for n in prepared.rows):
        logger.warning(
            "no central test data and no site holds a validation split (a site "
            "holds one from %d rows on): the model will not be evaluated",
            VALIDATION_FROM_ROWS,
        )
    if not prepared.rows or able >= need:
        return
    what = "vaults" if prepared.options.vaults else "sites"
    smallest = next(n for n in range(1, 1000) if not too_small(n))
    raise ConfigError(
        f"sites: only {able} of the {len(prepared.rows)} {what} would train "
        f"(min-sites {need}): a site needs {smallest} rows or more to train, and "
        f"these hold {min(prepared.rows)} to {max(prepared.rows)}; use fewer "
        "--sites or more data"
    )


def _site_inputs(
    prepared: PreparedData, work: Path, canaries: Mapping[str, pd.DataFrame]
) -> tuple[list[dict[str, str]], str]:
    """Write each data site's rows to its own file; vault sites keep their vault.
    ``canaries``: an auditor's rows added to a site's training rows (by site name).
    Returns the per-site run-config entries and the test file ('' if none)."""
    data_dir = work / "sites"
    data_dir.mkdir()
    entries: list[dict[str, str]] = []
    for pid, (name, source) in enumerate(prepared.sites):
        if isinstance(source, Path):
            key = str(Path(prepared.options.key).resolve())
            entries.append({"vault": str(source), "key-file": key})
            continue
        path = data_dir / f"site-{pid}.parquet"
        _data.write_rows(source, path, prepared.image_shape)
        regression = prepared.training.task == "regression"
        schema = _data.schema_of(
            prepared.options,
            prepared.sites,
            prepared.image_shape,
            work,
            regression=regression,
        )
        entries.append({"data": str(path)} | schema)
        if name in canaries:  # data sites only
            canaries[name].to_parquet(extra := data_dir / f"c-{pid}.parquet")
            entries[-1]["canaries"] = str(extra)
    if prepared.test is None:
        return entries, ""
    test_file = work / "test.parquet"
    _data.write_rows(prepared.test, test_file, prepared.image_shape)
    return entries, str(test_file)


def _run_config(
    prepared: PreparedData,
    out: Path,
    entries: list[dict[str, str]],
    test_file: str,
    states: list[Path],
) -> dict[str, Any]:
    opts = prepared.options
    settings = ServerSettings(
        training=prepared.training,
        target=prepared.options.target,
        out_dir=out,
        test_data=Path(test_file) if test_file else None,
        expected_sites=len(entries),
        excluded_sites=prepared.excluded,
        client_threads=1,
        run_key=uuid.uuid4().hex,
        simulation=True,
        init_model=Path(opts.init_model).resolve() if opts.init_model else None,
    )
    run_config: dict[str, Any] = dict(settings.to_run_config())
    for pid, ((name, _), entry) in enumerate(zip(prepared.sites, entries, strict=True)):
        site = entry | {"name": name, "state": str(states[pid].resolve())}
        run_config |= {simulated_site_key(pid, k): v for k, v in site.items()}
    return run_config


def run(
    cfg: SimulationConfig,
    out: Path,
    *,
    on_poll: Callable[[], None] | None = None,
    canaries: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Run the simulation; returns the parsed ``summary.json``. ``canaries``
    (``fedvault privacy audit``): rows added to the named sites' training rows.

    Everything is validated before ``out`` is created: bad input leaves no trace.
    """
    check_new_run_dir(out)
    _data.check_device(cfg.training.device, cfg.options.gpu_fraction)
    prepared = prepare_data(cfg)
    if len(prepared.sites) < prepared.training.min_sites:  # no round could run
        raise ConfigError(
            f"min-sites: {prepared.training.min_sites}, but only "
            f"{len(prepared.sites)} site(s) hold data; use fewer --min-sites or "
            "more --sites"
        )
    check_sizes(prepared)
    if cfg.options.init_model:  # architecture and columns, before --out exists
        lineage.check_frames(cfg.options.init_model, prepared.training, prepared.sites)
    state_root = Path(cfg.options.state) if cfg.options.state else None
    check_states(prepared, state_root)
    if state_root is not None:
        # a --state that cannot be made is refused before --out is created
        state_root.mkdir(parents=True, exist_ok=True)
        seed = prepared.training.seed
        if seed_used_before(state_root, seed) and prepared.training.dp:
            logger.warning(
                "seed: a run on --state %s already used --seed %d: the sites draw "
                "the same DP noise as in that run, which comparing the two runs "
                "cancels; use another --seed",
                state_root,
                seed,
            )
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    try:
        status = _simulate(cfg, prepared, out, state_root, on_poll, canaries or {})
    except KeyboardInterrupt:
        mark_interrupted(out)
        raise
    if status != "finished:completed" or not (out / SUMMARY_FILE).exists():
        raise FederationError(f"the run ended as {status!r}: {last_error(out)}")
    summary: dict[str, Any] = json.loads((out / SUMMARY_FILE).read_text())
    return summary


def _simulate(
    cfg: SimulationConfig,
    prepared: PreparedData,
    out: Path,
    state_root: Path | None,
    on_poll: Callable[[], None] | None,
    canaries: Mapping[str, pd.DataFrame],
) -> str:
    """Flower's part of the run, in a private work folder removed at the end
    (an interrupt included); returns the run's final status."""
    with tempfile.TemporaryDirectory(prefix="fedvault-sim-") as tmp:
        layout = _flower.SimulationLayout(Path(tmp))
        entries, test_file = _site_inputs(prepared, layout.work, canaries)
        port = free_port()
        states = site_states(prepared, state_root or layout.work / "state")
        run_config = _run_config(prepared, out, entries, test_file, states)
        layout.write(run_config, port)
        started = time.monotonic()
        with (
            (out / "flower.log").open("ab") as log,
            _flower.superlink(layout, port, log),
        ):
            status = _flower.submit_and_wait(
                layout,
                num_sites=len(entries),
                log=log,
                timeout=cfg.options.timeout,
                on_poll=on_poll,
                gpu_fraction=cfg.options.gpu_fraction,
            )
        logger.info(
            "simulation finished in %.1f s with status %s",
            time.monotonic() - started,
            status,
        )
    return status
