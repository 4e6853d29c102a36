"""fedvault's Flower ServerApp (component string ``fedvault.server.app:app``)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedvault.server.federation import Federation
from fedvault.server.received import RecordingGrid
from fedvault.server.settings import ServerSettings

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Parse the run config once, then run the federation to its report."""
    settings = ServerSettings.from_run_config(context.run_config)
    # every update received is digested into the run's received.jsonl
    run_key = settings.run_key or str(context.run_id)
    recording = RecordingGrid(grid, settings.out_dir, run_key)
    Federation(recording, settings).run()  # type: ignore[arg-type]
