"""The simulated sites' state folders: each site's ledger and its own policy file.

A policy written here is the site's own from then on (never overwritten). For a run
of a plug-in model it lists that model with the sha256 of its factory's module file
under ``[models]``, as a site operator would after reviewing the code; a policy
without a ``[models]`` table accepts the built-in models only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from fedvault.common.config import read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.model_zoo import is_plugin, plugin_sha256

if TYPE_CHECKING:
    from fedvault.server.simulate import PreparedData

MIN_NOISE_IN_SIMULATION = 0.3


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return cleaned or "site"


def site_states(prepared: PreparedData, root: Path) -> list[Path]:
    """One state folder per simulated site, holding its ledger and its policy.

    A policy file that exists is the site's own and is never overwritten (a second
    run on the same ``--state`` continues from the remaining budgets); a missing one
    is written from the run's settings, with lifetime budget ``--site-budget``
    (default: ``--epsilon``), and ``allow-non-private = true`` for a ``--no-dp``
    run only (a site's policy decides whether a run may switch DP off).
    """
    t, opts = prepared.training, prepared.options
    dataset = _safe(Path(opts.data).stem) if opts.data else "breast-cancer"
    dataset = opts.dataset or dataset
    budget = opts.site_budget or t.epsilon
    folders = []
    for name, _ in prepared.sites:
        folder = root / _safe(name)
        folder.mkdir(parents=True, exist_ok=True)
        policy = folder / "site.toml"
        if not policy.exists():
            table = {
                "dataset-id": dataset,
                "epsilon-max": budget,
                "delta": t.delta,
                "accountant": t.accountant,
                "max-grad-norm": t.max_grad_norm,
                "min-noise-multiplier": MIN_NOISE_IN_SIMULATION,
            }
            if not t.dp:
                table["allow-non-private"] = True
            policy.write_text(
                "# Written by fedvault simulate for a simulated site; edit freely.\n"
                + tomli_w.dumps({"privacy": table} | _models_table(t.model))
            )
        folders.append(folder)
    return folders


def check_states(prepared: PreparedData, root: Path) -> None:
    """Refuse, before anything is written, a ``--no-dp`` run on a ``--state``
    whose existing site policies do not allow it: those sites would decline every
    message of the run. Raises :class:`ConfigError` naming the site and the key."""
    if prepared.training.dp:
        return
    for name, _ in prepared.sites:
        policy = root / _safe(name) / "site.toml"
        if not policy.is_file():
            continue
        table = read_toml(policy).get("privacy", {})
        if not (isinstance(table, dict) and table.get("allow-non-private") is True):
            raise ConfigError(
                f"no-dp: site {name}'s policy ({policy}) does not allow training "
                "without differential privacy; it would decline the run (set "
                "allow-non-private = true there, or use another --state)"
            )




def _models_table(model: str) -> dict[str, Any]:
    """The ``[models]`` table that accepts a plug-in model (by its module's hash);
    none for a built-in (accepted without one)."""
    if not is_plugin(model):
        return {}
    return {"models": {"plugins": {model: plugin_sha256(model)}}}
