"""Same seed, same result, with client-level DP too: in simulation the coordinator
seeds the generator Flower's DP wrappers draw their noise from."""

import json

import pytest
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [101, 202, 303]


def _history(tmp_path, local_grid, make_contexts, *, simulation: bool):
    run_config = site_run_config(
        tmp_path, NODES, rounds=2, **{"client_dp": "server-fixed"}
    ) | {"simulation": simulation}
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    return [(row["loss"], row["accuracy"]) for row in summary["history"]]


@pytest.mark.parametrize("simulation", [True, False])
def test_client_level_noise_repeats_only_in_simulation(
    tmp_path, local_grid, make_contexts, simulation
):
    first = _history(tmp_path / "a", local_grid, make_contexts, simulation=simulation)
    again = _history(tmp_path / "b", local_grid, make_contexts, simulation=simulation)
    assert (first == again) is simulation
