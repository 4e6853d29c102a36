"""How many rows each simulated site's vault holds, asked of ``fedvault data inspect``.

A vault's manifest (and so its row count) is encrypted: the launcher cannot read it
without the key, and the coordinator's code never imports the site's vault code. So
the launcher asks the site's own command, ``fedvault data inspect VAULT --key KEY
--format json``, which decrypts the manifest only (never a row), one process per
vault, all at once. Used only to refuse an explicit ``--delta`` that is not below
1/n before Flower starts; each site checks delta against its own training rows
again (:func:`fedvault.client.policy.check_rows`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedvault.common.errors import ConfigError

_INSPECT = ("-c", "from fedvault.common.cli import main; main()", "data", "inspect")


def vault_rows(vaults: list[Path], key: Path, *, timeout: float = 120.0) -> list[int]:
    """The row count of each vault's manifest, in order.

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
    rows = []
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
                rows.append(int(json.loads(out)["rows"]))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"vaults: unreadable manifest of {vault}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError("vaults: reading the vaults' manifests timed out") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rows
