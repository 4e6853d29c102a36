"""Which state folder (ledger and policy) a simulated site's name is.

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

from fedvault.common.errors import ConfigError

#: In each site's state folder: the site's name, as its first run wrote it.
NAME_FILE = "site-name.txt"


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
