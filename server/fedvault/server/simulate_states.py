"""What a simulated site's new policy says about models (``[models]``).

For a run of a plug-in model it lists that model with the sha256 of its factory's
module file, as a site operator would after reviewing the code; a policy without a
``[models]`` table accepts the built-in models only
(:mod:`fedvault.client.model_policy` reads it).
"""

from __future__ import annotations

from typing import Any

from fedvault.common.model_zoo import is_plugin, plugin_sha256


def models_table(model: str) -> dict[str, Any]:
    """The ``[models]`` table that accepts a plug-in model (by its module's hash);
    none for a built-in (accepted without one)."""
    if not is_plugin(model):
        return {}
    return {"models": {"plugins": {model: plugin_sha256(model)}}}
