"""Writing a schema contract as commented TOML (``schema infer`` drafts, demo data).

The output parses back to an equal :class:`~fedvault.client.data.schema.Schema`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from fedvault.client.data.schema import Schema

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def schema_to_toml(
    schema: Schema,
    *,
    header: Sequence[str] = (),
    notes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """TOML text for ``schema``; ``header`` and per-column ``notes`` become comments."""
    notes = notes or {}
    data = schema.to_dict()
    lines = [f"# {line}" if line else "#" for line in header]
    if lines:
        lines.append("")
    dataset = dict(data["dataset"])
    freshness = dataset.pop("freshness", None)
    lines.append("[dataset]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in dataset.items())
    if freshness is not None:
        lines += ["", "[dataset.freshness]"]
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in freshness.items())
    for name, spec in data["columns"].items():
        lines += ["", f"[columns.{_key(name)}]"]
        lines.extend(f"# {note}" for note in notes.get(name, ()))
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in spec.items())
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):  # JSON escapes are TOML escapes, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
