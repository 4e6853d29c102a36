"""A site: its ClientApp, data pipeline and vault, DP-SGD training, privacy policy
and ledger, and its SuperNode.

Its public objects are named in ``__all__`` and import lazily from here
(``from fedvault.client import X``); each lives in the submodule ``_WHERE`` names.
"""

from fedvault.common._exports import lazy_exports

__all__ = [
    "LocalSettings",
    "PrivacyLedger",
    "SiteBudget",
    "SiteConfig",
    "SitePolicy",
    "SiteSettings",
    "TrainResult",
    "answers_mod",
    "check_request",
    "dp_schedule",
    "load_policy",
    "load_site_config",
    "load_site_data",
    "plan_run_noise",
    "privacy_mod",
    "run_site",
    "to_tensors",
    "train_plain",
    "train_private",
    "verify_ledger",
]

_WHERE = {
    "LocalSettings": "training",
    "PrivacyLedger": "ledger",
    "SiteBudget": "budget",
    "SiteConfig": "site_config",
    "SitePolicy": "policy",
    "SiteSettings": "site",
    "TrainResult": "training",
    "answers_mod": "answer_log",
    "check_request": "policy",
    "dp_schedule": "training",
    "load_policy": "policy",
    "load_site_config": "site_config",
    "load_site_data": "site",
    "plan_run_noise": "policy",
    "privacy_mod": "mods",
    "run_site": "supernode",
    "to_tensors": "site",
    "train_plain": "training",
    "train_private": "training",
    "verify_ledger": "ledger",
}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
