"""Which models a site trains: the ``[models]`` table of its policy file.

    [models]
    accept = ["mlp", "logreg", "cnn"]          # built-ins (default: all of them)
    [models.plugins]                            # plug-ins (default: none)
    "mypkg.nets:build" = "<sha256 of mypkg/nets.py>"

A plug-in is accepted only under its exact name and only while the module file
installed at the site has the sha256 the operator approved
(:func:`fedvault.common.model_zoo.plugin_sha256`): changed code is declined as an
unapproved model. Any other model is declined with reason ``policy`` before the
site reads data or imports the plug-in's module.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fedvault.common.config import MODEL_NAMES, read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.model_zoo import is_plugin, plugin_sha256
from fedvault.common.protocol import Decline

MODELS_TABLE = "models"


@dataclass(frozen=True)
class ModelPolicy:
    """The built-in models and the plug-ins (name -> module sha256) a site trains."""

    accept: tuple[str, ...] = MODEL_NAMES
    plugins: tuple[tuple[str, str], ...] = ()


def load_model_policy(path: Path) -> ModelPolicy:
    """The ``[models]`` table of the policy file ``path`` (defaults without one).

    Raises :class:`ConfigError` naming the key for a malformed table.
    """
    table = read_toml(path).get(MODELS_TABLE)
    if table is None:
        return ModelPolicy()
    if not isinstance(table, dict) or set(table) - {"accept", "plugins"}:
        raise ConfigError(f"{path} [models]: only accept and plugins are allowed")
    accept = table.get("accept", list(MODEL_NAMES))
    plugins = table.get("plugins", {})
    if not isinstance(accept, list) or not all(a in MODEL_NAMES for a in accept):
        raise ConfigError(f"{path} [models] accept: a list of {MODEL_NAMES}")
    if not isinstance(plugins, dict) or not all(
        isinstance(v, str) and len(v) == 64 for v in plugins.values()
    ):
        raise ConfigError(
            f"{path} [models.plugins]: each plug-in maps to its module's sha256"
        )
    return ModelPolicy(tuple(accept), tuple(sorted(plugins.items())))


def check_model(policy: ModelPolicy, model: str) -> Decline | None:
    """None when the site trains ``model``, else its ``policy`` decline."""
    if not is_plugin(model):
        if model in policy.accept:
            return None
        return Decline("policy", f"model {model!r} is not among the site's models")
    approved = dict(policy.plugins).get(model)
    if approved is None:
        return Decline("policy", f"plug-in model {model!r} is not approved here")
    try:
        installed = plugin_sha256(model)
    except ConfigError as exc:
        return Decline("policy", str(exc))
    if not hmac.compare_digest(installed, approved):
        return Decline(
            "policy",
            f"plug-in model {model!r}: the installed module differs from the "
            "approved one (sha256)",
        )
    return None
