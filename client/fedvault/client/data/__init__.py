"""A site's data pipeline: schema contract, anonymization, quality, encrypted vault.

See docs/data.md. The command line lives in :mod:`fedvault.client.data_cli`.
"""

from fedvault.client.data.importer import (
    ImportOptions,
    ImportResult,
    OnInvalid,
    import_raw,
)
from fedvault.client.data.keys import (
    generate_key,
    key_from_env,
    key_from_passphrase,
    key_id,
    load_key,
    write_key,
)
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema import Column, ColumnType, Role, Schema
from fedvault.client.data.schema_toml import load_schema, parse_schema
from fedvault.client.data.vault import (
    Manifest,
    iter_batches,
    read_frame,
    read_manifest,
    rotate_key,
)

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
    "write_key",
]
