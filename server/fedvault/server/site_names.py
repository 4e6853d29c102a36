"""The state folders (ledger and policy) of ``fedvault simulate``'s sites, and
which folder a site's name is.

Under ``fedvault simulate --state ROOT`` each site keeps its ledger in
``ROOT/<folder>``, the folder named from the site's name (characters other than
letters, digits, ``.``, ``_`` and ``-`` become ``_``). A site's identity is its name's
raw text: the folder records it (:data:`NAME_FILE`) when first made, and a later run
finds the same folder only under exactly the same name.

A name that would reach an existing ledger under another spelling is refused rather
than given a ledger of its own (or a ledger of another site): two names are the same
site written two ways when they agree once case, whitespace, the separators
``. _ - =`` and the leading zeros of numbers are ignored (``site_code=007`` and
``site_code=7``, ``Hospital A`` and ``hospital-a``). Otherwise one hospital would get
two ledgers and spend its lifetime budget twice.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from fedvault.common.config import read_toml
from fedvault.common.errors import ConfigError
from fedvault.server.simulate_states import models_table

if TYPE_CHECKING:
    from fedvault.server.simulate import PreparedData

#: In each site's state folder: the site's name, as its first run wrote it.
NAME_FILE = "site-name.txt"
#: In the ``--state`` folder: the seeds of the runs made on it, one a line.
SEEDS_FILE = "seeds-used.txt"
#: The smallest noise multiplier the policies ``simulate`` writes allow.
MIN_NOISE_IN_SIMULATION = 0.3


def folder_name(name: str) -> str:
    """The state folder's name for site ``name`` (never empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return cleaned or "site"


def identity(name: str) -> str:
    """What two spellings of one site share (see the module docstring)."""
    text = unicodedata.normalize("NFKC", folder_name(name)).casefold()
    text = re.sub(r"[\s._=-]+", "", text)
    return re.sub(r"(?<!\d)0+(?=\d)", "", text)


def state_folders(names: Sequence[str], root: Path | None) -> list[Path]:
    """The state folder of each site, in order, under ``root`` (checked, not made).

    With ``root`` None only the names of this run are checked against each other.
    Raises :class:`ConfigError` (one line naming both spellings) when two sites of
    the run are one site written two ways, or a site would reach an existing ledger
    under ``root`` under another spelling.
    """
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(identity(name), name)
        if other != name:
            raise ConfigError(
                f"sites: {other!r} and {name!r} would be one site written two ways "
                "(names differ only in case, spacing, separators or leading zeros); "
                "write each site's name one way"
            )
    if root is None:
        return [Path(folder_name(name)) for name in names]
    existing = _existing(root)
    for name in names:
        folder, recorded = existing.get(identity(name), (None, None))
        if folder is None:
            continue
        if recorded is None:
            recorded = folder.name  # made before names were recorded
            if recorded == folder_name(name):
                continue
        elif recorded == name:
            continue
        raise ConfigError(
            f"state: site {name!r} would use the ledger of site "
            f"{recorded!r} ({folder}) under another spelling; name "
            "the site exactly as before, or use another --state"
        )
    return [root / folder_name(name) for name in names]


def claim(folder: Path, name: str) -> None:
    """Record ``name`` as the site of ``folder`` (once; a folder keeps its site)."""
    path = folder / NAME_FILE
    if not path.exists():
        path.write_text(name + "\n", encoding="utf-8")


def seed_used_before(root: Path, seed: int) -> bool:
    """Whether a run on the state ``root`` already used ``seed`` (recorded now).

    A simulated site's DP noise derives from the run's seed, its name and the
    round: a second run with the same seed draws the same noise, which comparing
    the two runs cancels."""
    path = root / SEEDS_FILE
    used = path.read_text(encoding="utf-8").split() if path.is_file() else []
    if str(seed) in used:
        return True
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{seed}\n")
    return False


def _existing(root: Path) -> dict[str, tuple[Path, str | None]]:
    """identity -> (folder, the site's recorded name) of the state folders under
    ``root``; the name is None for a folder made before names were recorded."""
    if not root.is_dir():
        return {}
    found: dict[str, tuple[Path, str | None]] = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        path = folder / NAME_FILE
        if path.is_file():
            name = path.read_text(encoding="utf-8").rstrip("\n")
            found[identity(name)] = (folder, name)
        else:
            found[identity(folder.name)] = (folder, None)
    return found


def site_states(prepared: PreparedData, root: Path) -> list[Path]:
    """One state folder per simulated site, holding its ledger and its policy.

    A policy file that exists is the site's own and is never overwritten (a second
    run on the same ``--state`` continues from the remaining budgets); a missing one
    is written from the run's settings, with lifetime budget ``--site-budget``
    (default: ``--epsilon``), and ``allow-non-private = true`` for a ``--no-dp``
    run only (a site's policy decides whether a run may switch DP off).
    """
    t, opts = prepared.training, prepared.options
    dataset = folder_name(Path(opts.data).stem) if opts.data else "breast-cancer"
    dataset = opts.dataset or dataset
    budget = opts.site_budget or t.epsilon
    names = [name for name, _ in prepared.sites]
    folders = state_folders(names, root)
    for name, folder in zip(names, folders, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        claim(folder, name)
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
                + tomli_w.dumps({"privacy": table} | models_table(t.model))
            )
    return folders


def check_states(prepared: PreparedData, root: Path | None) -> None:
    """Refuse, before anything is written, what the sites would only refuse once
    Flower runs: site names that are one site written two ways or reach an
    existing ledger under another spelling (:func:`state_folders`), a fixed
    ``--noise-multiplier`` below a site's minimum, and on a ``--state`` with
    existing site policies a ``--no-dp`` run they do not allow or a
    ``--site-budget`` other than the lifetime budget they hold (a site's policy
    decides; it is never overwritten). Raises :class:`ConfigError` naming the
    site, its policy file and the key."""
    names = [name for name, _ in prepared.sites]
    folders = state_folders(names, root)
    for name, folder in zip(names, folders, strict=True):
        policy = folder / "site.toml"
        table: dict[str, object] = {"min-noise-multiplier": MIN_NOISE_IN_SIMULATION}
        held = read_toml(policy).get("privacy") if root and policy.is_file() else None
        new = not isinstance(held, dict)
        if isinstance(held, dict):
            table = held
        problem = _policy_problem(prepared, table, new=new)
        if problem is not None:
            where = "as simulate writes it" if new else str(policy)
            raise ConfigError(
                f"{problem[0]}: site {name}'s policy ({where}) {problem[1]}"
            )


def _policy_problem(
    prepared: PreparedData, table: dict[str, object], *, new: bool
) -> tuple[str, str] | None:
    """(option, what the policy says) when the run asks what ``table`` refuses."""
    t, budget = prepared.training, prepared.options.site_budget
    floor = table.get("min-noise-multiplier")
    fixed = t.noise_multiplier if t.dp else 0.0  # 0: each site plans its own
    if isinstance(floor, int | float) and 0 < fixed < floor:
        return (
            "noise-multiplier",
            f"allows no noise multiplier below {floor:g}; it would decline "
            f"{fixed:g} (use --noise-multiplier {floor:g} or more)",
        )
    if new:
        return None
    if not t.dp and table.get("allow-non-private") is not True:
        return (
            "no-dp",
            "does not allow training without differential privacy; it would "
            "decline the run (set allow-non-private = true there, or use another "
            "--state)",
        )
    held = table.get("epsilon-max")
    if budget and isinstance(held, int | float) and held != budget:
        return (
            "site-budget",
            f"holds its own lifetime budget epsilon-max = {held:g}, not "
            f"{budget:g}: --site-budget only sets the budget of new sites (edit "
            "epsilon-max there, or leave --site-budget out)",
        )
    return None
