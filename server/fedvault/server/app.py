"""fedvault's Flower ServerApp (component string ``fedvault.server.app:app``)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Parse the run config once, then run the federation to its report."""
    settings = ServerSettings.from_run_config(context.run_config)
    Federation(grid, settings).run()
