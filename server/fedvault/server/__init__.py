"""The coordinator: its ServerApp and round loop, reports, simulation launcher and
SuperLink deployment.

Public modules are listed in ``__all__``; import them by name.
"""

__all__ = [
    "app",
    "certs_cli",
    "checks",
    "compress",
    "control",
    "coordinator",
    "deploy",
    "explain",
    "export",
    "federation",
    "html_report",
    "model_card",
    "model_card_text",
    "model_cli",
    "predict",
    "registry",
    "report",
    "report_cli",
    "report_plots",
    "rundir",
    "secagg",
    "server_cli",
    "settings",
    "simulate",
    "simulate_cli",
    "strategy",
    "trained",
]
