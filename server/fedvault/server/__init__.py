"""The coordinator: its ServerApp and round loop, reports, simulation launcher and
SuperLink deployment.

Public modules are listed in ``__all__``; import them by name.
"""

__all__ = [
    "app",
    "certs_cli",
    "checks",
    "control",
    "coordinator",
    "deploy",
    "federation",
    "registry",
    "report",
    "rundir",
    "runstate",
    "secagg",
    "server_cli",
    "settings",
    "simulate",
    "simulate_cli",
    "strategy",
    "superlink",
]
