"""The coordinator: its ServerApp and round loop, reports, simulation launcher and
SuperLink deployment.

Its public objects are named in ``__all__`` and import lazily from here
(``from fedvault.server import X``); each lives in the submodule ``_WHERE`` names.
"""

from fedvault.common._exports import lazy_exports

__all__ = [
    "CoordinatorConfig",
    "Federation",
    "HealthServer",
    "RunDirectory",
    "RunState",
    "ServerSettings",
    "SimulationConfig",
    "SiteBook",
    "TrainedModel",
    "build_html",
    "load_config",
    "load_coordinator_config",
    "make_strategy",
    "predict_file",
    "prepare_data",
    "privacy_report",
    "run_summary",
    "write_for_run",
]

_WHERE = {
    "CoordinatorConfig": "deploy",
    "Federation": "federation",
    "HealthServer": "health",
    "RunDirectory": "rundir",
    "RunState": "checkpoint",
    "ServerSettings": "settings",
    "SimulationConfig": "simulate",
    "SiteBook": "sites",
    "TrainedModel": "trained",
    "build_html": "html_report",
    "load_config": "simulate",
    "load_coordinator_config": "deploy",
    "make_strategy": "strategy",
    "predict_file": "predict",
    "prepare_data": "simulate",
    "privacy_report": "report",
    "run_summary": "report",
    "write_for_run": "model_card",
}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
