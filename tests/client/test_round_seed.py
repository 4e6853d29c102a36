"""Whose randomness a round's DP noise comes from."""

from fedvault.client.rounds import round_seed as _round_seed
from fedvault.client.site import site_settings

RUN = {"site.0.name": "site-1", "site.0.data": "/data/site-1.parquet"}


def test_simulated_site_replays_its_noise_from_the_run_seed():
    site = site_settings({"partition-id": 0}, RUN)
    assert site.simulated
    first = _round_seed(site, 7, 3, "train")
    assert first == _round_seed(site, 7, 3, "train")  # same seed, same result
    assert first != _round_seed(site, 8, 3, "train")
    assert first != _round_seed(site, 7, 4, "train")


def test_deployed_site_noise_cannot_be_replayed_from_the_run_seed():
    # The run seed is the coordinator's: a deployed site must not derive its noise
    # from it, or the coordinator could regenerate and subtract the noise.
    node = {"site-name": "hospital-a", "data": "/data/a.parquet"}
    site = site_settings(node, {"seed": 7})
    assert not site.simulated
    seeds = {_round_seed(site, 7, 3, "train") for _ in range(8)}
    assert len(seeds) == 8
