"""A site: its ClientApp, data pipeline and vault, DP-SGD training, privacy policy
and ledger, and its SuperNode.

Public modules are listed in ``__all__``; import them by name.
"""

__all__ = [
    "app",
    "budget",
    "client_cli",
    "data",
    "data_cli",
    "flower_log",
    "ledger",
    "ledger_cli",
    "mods",
    "policy",
    "runtime",
    "site",
    "site_config",
    "supernode",
    "training",
]
