"""What each simulated site's vault holds (rows, target), asked of ``fedvault data
inspect``.

A vault's manifest (and so its row count) is encrypted: the launcher cannot read it
without the key, and the coordinator's code never imports the site's vault code. So
the launcher asks the site's own command, ``fedvault data inspect VAULT --key KEY
--format json``, which decrypts the manifest only (never a row), one process per
vault, all at once. Used before Flower starts to take the target from the vaults'
schemas, to refuse an explicit ``--delta`` that is not below 1/n, and to name a
vault the key does not open; each site checks delta against its own training rows
again (:func:`fedvault.client.policy.check_rows`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedvault.common.errors import ConfigError

_INSPECT = ("-c", "from fedvault.common.cli import main; main()", "data", "inspect")


def vault_facts(
    vaults: list[Path], key: Path, *, timeout: float = 120.0
) -> list[tuple[int, str]]:
    """The row count and target column of each vault's manifest, in order.

    Raises :class:`ConfigError` naming the vault when its manifest cannot be read
    with ``key`` (wrong key, tampered vault) or the inspection fails.
    """
    procs = [
        subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, *_INSPECT, str(v), "--key", str(key), "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for v in vaults
    ]
    facts = []
    try:
        for vault, proc in zip(vaults, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
            if proc.returncode != 0:
                raise ConfigError(
                    f"vaults: cannot read the manifest of {vault} with the key: "
                    f"{lines[-1]}"
                )
            try:
                manifest = json.loads(out)
                facts.append((int(manifest["rows"]), str(manifest["target"])))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"vaults: unreadable manifest of {vault}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError("vaults: reading the vaults' manifests timed out") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()  # reaps it and closes its pipes
    return facts


def vault_target(targets: dict[str, str], *, given: str, default: str) -> str:
    """The target the vaults' schemas declare (they must agree). A ``--target``
    given that differs (anything but ``default``, i.e. not given) is refused before
    Flower starts. Raises :class:`ConfigError`."""
    declared = sorted(set(targets.values()))
    if len(declared) != 1:
        raise ConfigError(f"vaults: their schemas declare different targets: {targets}")
    target = declared[0]
    if given not in (default, target):
        raise ConfigError(
            f"target: {given!r} is not the vaults' target; their schema declares "
            f"{target!r} (leave --target out to use it)"
        )
    return target
