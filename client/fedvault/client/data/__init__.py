"""A site's data pipeline: schema contract, anonymization, quality, encrypted vault.

See docs/data.md. The command line lives in :mod:`fedvault.client.data_cli`. Its
public objects are named in ``__all__`` and import lazily from here
(``from fedvault.client.data import X``); each lives in the submodule ``_WHERE``
names.
"""

from fedvault.common._exports import lazy_exports

__all__ = [
    "Column",
    "ColumnType",
    "ImportOptions",
    "ImportResult",
    "Manifest",
    "OnInvalid",
    "ReadOptions",
    "Role",
    "Schema",
    "generate_key",
    "import_raw",
    "infer_schema",
    "iter_batches",
    "key_from_env",
    "key_from_passphrase",
    "key_id",
    "load_key",
    "load_schema",
    "parse_schema",
    "read_frame",
    "read_manifest",
    "rotate_key",
    "verify_vault",
    "write_demo",
    "write_key",
]

_WHERE = {
    "Column": "schema",
    "ColumnType": "schema",
    "ImportOptions": "importer",
    "ImportResult": "importer",
    "Manifest": "vault",
    "OnInvalid": "importer",
    "ReadOptions": "reader",
    "Role": "schema",
    "Schema": "schema",
    "generate_key": "keys",
    "import_raw": "importer",
    "infer_schema": "infer",
    "iter_batches": "vault",
    "key_from_env": "keys",
    "key_from_passphrase": "keys",
    "key_id": "keys",
    "load_key": "keys",
    "load_schema": "schema_toml",
    "parse_schema": "schema_toml",
    "read_frame": "vault",
    "read_manifest": "vault",
    "rotate_key": "vault",
    "verify_vault": "vault",
    "write_demo": "demo",
    "write_key": "keys",
}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
