"""Shared by every role: config, errors, models, data loading, partitioning,
federated preprocessing, privacy planning and accounting, certificates, the CLI shell.

Public modules are listed in ``__all__``; import them by name.
"""

__all__ = [
    "certs",
    "cli",
    "config",
    "data",
    "errors",
    "evaluation",
    "files",
    "flower_logs",
    "models",
    "net",
    "partition",
    "preprocessing",
    "privacy",
    "processes",
    "protocol",
    "records",
    "wire",
]
