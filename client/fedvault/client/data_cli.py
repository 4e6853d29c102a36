"""``fedvault data``: a site's own data pipeline, from raw export to encrypted vault.

Commands: ``schema infer``, ``import``, ``keygen``, ``rotate-key``, ``inspect``,
``demo``. User errors print one ``error:`` line on stderr and exit with status 2
(1 for failures that are not the user's); the vault is left as it was.
"""

from __future__ import annotations

import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedvault.client.data import keys, render
from fedvault.client.data.demo import DEMO_TARGET, write_demo
from fedvault.client.data.dicom import write_dicom_demo
from fedvault.client.data.image_import import (
    KIND as IMAGES,
)
from fedvault.client.data.image_import import (
    ImageImportOptions,
    import_images,
    parse_classes,
)
from fedvault.client.data.importer import ImportOptions, OnInvalid, import_raw
from fedvault.client.data.infer import infer_schema
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema_toml import load_schema
from fedvault.client.data.vault import read_header, rotate_key, verify_vault
from fedvault.client.data.vault_format import MANIFEST_NAME
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    errors_as_exit,
    print_json,
)
from fedvault.common.errors import ConfigError

# In a vault's manifest as printed: maps keyed by column, class or size names, and
# the schema (with its generalizations) in the words of its TOML file.
MAPS_BY_NAME = ("columns", "class-balance", "original-sizes", "channels")
AS_STORED = ("schema", "generalized")

data_app = command_group(
    "data",
    "Site data: schema contract, anonymization, encrypted vault, quality report.",
)
schema_app = command_group("schema", "Schema contracts.")
data_app.add_typer(schema_app, name="schema")

KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", help="Key file (from `keygen`); or set FEDVAULT_DATA_KEY."),
]
PassOpt = Annotated[
    bool,
    typer.Option(
        "--passphrase",
        help="Derive the key from a passphrase (prompt, or FEDVAULT_DATA_PASSPHRASE).",
    ),
]
DelimOpt = Annotated[
    str | None,
    typer.Option(
        "--delimiter",
        help="CSV field separator (default: detected among , ; TAB |).",
    ),
]
EncOpt = Annotated[str, typer.Option("--encoding", help="Text encoding of the CSV.")]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


@schema_app.command("infer")
@errors_as_exit(os_errors=True)
def schema_infer(
    raw: Annotated[Path, typer.Argument(help="Raw export (CSV or Parquet).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here.")] = None,
    delimiter: DelimOpt = None,
    encoding: EncOpt = "utf-8",
) -> None:
    """Draft a schema contract from RAW and flag columns that look personal."""
    if out is not None and out.exists():
        raise ConfigError(f"{out}: already exists; choose another --out")
    options = ReadOptions(delimiter=delimiter, encoding=encoding)
    draft = infer_schema(raw, options=options)
    text = draft.to_toml(raw.name)
    flagged = {n: f for n, f in draft.findings.items() if f}
    lines = [f"{n}: " + "; ".join(x.describe() for x in f) for n, f in flagged.items()]
    if out is None:
        sys.stdout.write(text)
        for line in lines:
            typer.echo(f"personal data? {line}", err=True)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote draft schema {out} ({len(draft.schema.columns)} columns)")
    for line in lines:
        typer.echo(f"  personal data? {line}")
    typer.echo("Review every role before importing: roles decide what is kept.")


@data_app.command("import")
@errors_as_exit(os_errors=True)
def import_command(
    raw: Annotated[Path, typer.Argument(help="Raw export (CSV or Parquet).")],
    schema: Annotated[Path, typer.Option("--schema", help="Schema contract (TOML).")],
    vault: Annotated[Path, typer.Option("--vault", help="Vault folder to write.")],
    key: KeyOpt = None,
    passphrase: PassOpt = False,
    secret: Annotated[
        Path | None,
        typer.Option("--secret", help="Site secret for pseudonyms (from `keygen`)."),
    ] = None,
    on_invalid: Annotated[
        OnInvalid, typer.Option("--on-invalid", help="fail, or drop invalid rows.")
    ] = OnInvalid.FAIL,
    delimiter: DelimOpt = None,
    encoding: EncOpt = "utf-8",
    chunk_rows: Annotated[int, typer.Option("--chunk-rows")] = 100_000,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Reference date YYYY-MM-DD.")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace the dataset the vault already holds (same key only).",
        ),
    ] = False,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Validate, anonymize, measure and encrypt RAW into the vault (a vault that
    already holds a dataset is replaced only with --replace, under its own key)."""
    contract = load_schema(schema)
    existing = replace and (vault / MANIFEST_NAME).is_file()
    vault_key, salt = _resolve_key(vault, key, passphrase, existing=existing)
    site_secret = _resolve_secret(secret, vault)
    options = ImportOptions(
        on_invalid=on_invalid,
        read=ReadOptions(delimiter=delimiter, encoding=encoding, chunk_rows=chunk_rows),
        as_of=_parse_date(as_of),
        replace=replace,
    )
    result = import_raw(
        raw,
        contract,
        vault,
        key=vault_key,
        secret=site_secret,
        options=options,
        kdf_salt=salt,
    )
    manifest, old = result.manifest, result.replaced
    if output is OutputFormat.JSON:
        replaced = None if old is None else old.to_dict()
        document = {"vault": str(vault), **manifest.to_dict(), "replaced": replaced}
        print_json(document, by_name=MAPS_BY_NAME, verbatim=AS_STORED)
        return
    console = _console()
    if old is not None:
        console.print(
            f"replaced dataset {old.dataset_id} ({old.rows} rows, imported "
            f"{old.created})"
        )
    console.print(render.manifest_table(manifest, vault=str(vault)))
    console.print(render.quality_table(manifest.quality))
    console.print(render.weak_columns_table(manifest.quality))


@data_app.command("import-images")
@errors_as_exit(os_errors=True)
def import_images_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A folder per class (ROOT/<label>/*.png|jpg|dcm) or a CSV/Parquet "
            "manifest (path, label columns)."
        ),
    ],
    vault: Annotated[Path, typer.Option("--vault", help="Vault folder to write.")],
    key: KeyOpt = None,
    passphrase: PassOpt = False,
    secret: Annotated[
        Path | None,
        typer.Option("--secret", help="Site secret (keyed DICOM pseudonyms)."),
    ] = None,
    label: Annotated[str, typer.Option(help="Label column of a manifest.")] = "label",
    classes: Annotated[
        str,
        typer.Option(
            help="Declared label classes, comma-separated (the consortium's schema "
            "contract): their noisy counts are always released in the site's "
            "summary; undeclared ones only above a noisy threshold."
        ),
    ] = "",
    size: Annotated[int, typer.Option(help="Images are resized to SIZE x SIZE.")] = 64,
    channels: Annotated[
        int | None,
        typer.Option(
            help="1 (grey) or 3 (colour): files with another channel count are "
            "left out and reported, not converted; default: the first usable file's."
        ),
    ] = None,
    allow_burned_in: Annotated[
        bool,
        typer.Option(help="Accept DICOM files flagged with burned-in annotations."),
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the vault's dataset (same key).")
    ] = False,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """De-identify (DICOM: PS3.15 Annex E) and encrypt images into the vault."""
    existing = replace and (vault / MANIFEST_NAME).is_file()
    vault_key, _ = _resolve_key(vault, key, passphrase, existing=existing)
    options = ImageImportOptions(
        size=(size, size),
        channels=channels,
        label=label,
        classes=parse_classes(classes),
        allow_burned_in=allow_burned_in,
        replace=replace,
    )
    result = import_images(
        source,
        vault,
        key=vault_key,
        secret=_resolve_secret(secret, vault),
        options=options,
    )
    if output is OutputFormat.JSON:
        document = {"vault": str(vault), **result.manifest.to_dict()}
        print_json(document, by_name=MAPS_BY_NAME, verbatim=AS_STORED)
        return
    console = _console()
    console.print(render.manifest_table(result.manifest, vault=str(vault)))
    console.print(render.image_quality_table(result.report))


@data_app.command("keygen")
@errors_as_exit(os_errors=True)
def keygen(
    path: Annotated[Path, typer.Argument(help="Key file to create (mode 0600).")],
) -> None:
    """Create a 256-bit key file (vault key or site secret); never overwrites."""
    key = keys.write_key(path)
    typer.echo(f"wrote {path} (key id {keys.key_id(key)}, mode 0600)")
    typer.echo(
        "Back it up outside the vault: a vault key opens its vault, a site secret "
        "keys its pseudonyms; neither can be recovered."
    )


@data_app.command("rotate-key")
@errors_as_exit(os_errors=True)
def rotate_key_command(
    vault: Annotated[Path, typer.Argument(help="Vault folder.")],
    key: KeyOpt = None,
    passphrase: PassOpt = False,
    new_key: Annotated[
        Path | None, typer.Option("--new-key", help="New key file (from `keygen`).")
    ] = None,
    new_passphrase: Annotated[bool, typer.Option("--new-passphrase")] = False,
) -> None:
    """Re-encrypt the vault under a new key, atomically."""
    old, _ = _resolve_key(vault, key, passphrase, existing=True)
    if new_key is None and not new_passphrase:
        raise ConfigError(
            "pass --new-key FILE (create it with keygen) or --new-passphrase"
        )
    new, salt = _resolve_key(
        vault, new_key, new_passphrase, existing=False, env=keys.NEW_PASSPHRASE_ENV
    )
    if new == old:
        raise ConfigError("the new key is the old key; create a new one with keygen")
    manifest = rotate_key(vault, old, new, kdf_salt=salt)
    typer.echo(f"re-encrypted {vault} under key id {manifest.key_id}")
    typer.echo("The old key no longer opens it; destroy the old key file.")


@data_app.command("inspect")
@errors_as_exit(os_errors=True)
def inspect(
    vault: Annotated[Path, typer.Argument(help="Vault folder.")],
    key: KeyOpt = None,
    passphrase: PassOpt = False,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Show a vault's manifest, schema and quality report (never rows), after
    authenticating every chunk: a damaged vault exits 2 naming the chunk."""
    vault_key, _ = _resolve_key(vault, key, passphrase, existing=True)
    manifest = verify_vault(vault, vault_key)
    if output is OutputFormat.JSON:
        print_json(manifest.to_dict(), by_name=MAPS_BY_NAME, verbatim=AS_STORED)
        return
    console = _console()
    console.print(render.manifest_table(manifest, vault=str(vault)))
    if manifest.schema.get("kind") == IMAGES:
        console.print(render.image_quality_table(manifest.quality))
        return
    console.print(render.columns_table(manifest))
    console.print(render.quality_table(manifest.quality))
    console.print(render.weak_columns_table(manifest.quality))


@data_app.command("demo")
@errors_as_exit(os_errors=True)
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo files.")],
    sites: Annotated[int, typer.Option("--sites", help="Number of sites.")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    kind: Annotated[
        str,
        typer.Option(
            help="table: hospital exports (fake people, real clinical data) and a "
            "schema; dicom: pydicom's bundled DICOM samples as a PACS export."
        ),
    ] = "table",
) -> None:
    """Write demo hospital exports: tables and a schema, or DICOM files."""
    if kind == "dicom":
        written = write_dicom_demo(out)
        typer.echo(f"wrote {len(written)} DICOM files (identified headers) in {out}")
        typer.echo("Next (a key and a site secret first):")
        typer.echo("  fedvault data keygen site.key; fedvault data keygen site.secret")
        typer.echo(
            f"  fedvault data import-images {out} --vault vaults/dicom "
            "--key site.key --secret site.secret --size 64"
        )
        return
    if kind != "table":
        raise ConfigError(f"--kind: use table or dicom, not {kind!r}")
    files = write_demo(out, sites=sites, seed=seed)
    typer.echo(f"wrote {len(files.sites)} site exports and {files.schema}")
    typer.echo(f"label column: {DEMO_TARGET}. Next (one key and secret here, as the")
    typer.echo("README does; each real site keeps its own), then per site i:")
    typer.echo("  fedvault data keygen site.key; fedvault data keygen site.secret")
    typer.echo(
        f"  fedvault data import {out}/site-i.csv --schema {files.schema} "
        "--vault vaults/site-i --key site.key --secret site.secret"
    )


def _resolve_key(
    vault: Path,
    key_file: Path | None,
    passphrase: bool,
    *,
    existing: bool,
    env: str = keys.PASSPHRASE_ENV,
) -> tuple[bytes, bytes | None]:
    """The vault key and, for passphrase keys, the scrypt salt to store."""
    if key_file is not None and passphrase:
        raise ConfigError("use either a key file or a passphrase, not both")
    if key_file is not None:
        return keys.load_key(key_file, vault_dir=vault), None
    if passphrase:
        phrase = os.environ.get(env) or typer.prompt(
            "Vault passphrase", hide_input=True, confirmation_prompt=not existing
        )
        salt = read_header(vault).kdf_salt if existing else os.urandom(16)
        return keys.key_from_passphrase(phrase, salt), salt
    from_env = keys.key_from_env()
    if from_env is None:
        raise ConfigError(
            "no key: pass --key FILE (create one with `fedvault data keygen FILE`), "
            f"--passphrase, or set {keys.KEY_ENV}"
        )
    return from_env, None


def _resolve_secret(path: Path | None, vault: Path) -> bytes | None:
    if path is not None:
        return keys.load_key(path, vault_dir=vault)
    return keys.key_from_env(name=keys.SECRET_ENV)


def _parse_date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise ConfigError(f"--as-of: expected YYYY-MM-DD, got {text!r}") from None


if __name__ == "__main__":  # pragma: no cover - ``python -m fedvault.client.data_cli``
    data_app()
