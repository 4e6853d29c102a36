"""Lazy re-exports for the packages' ``__init__`` (PEP 562).

Each package names its public objects in ``__all__``; importing the package must
stay cheap (a site's ClientApp process and every ``fedvault`` command import it), so
an object's module is imported only when the object is first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public object
    ``name`` lives in its submodule ``where[name]``.

    The returned ``__getattr__`` raises :class:`AttributeError` for other names.
    """

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    def dir_() -> list[str]:
        return sorted(where)

    return getattr_, dir_
