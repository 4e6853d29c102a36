"""A site the coordinator knew is let back in after a lost connection, and a site
started with its coordinator is let in once its key is registered; a key refused
for longer is named (the SuperNode's runs are stand-ins here; the
real processes are in tests/integration/test_site_lifecycle.py)."""

from __future__ import annotations

import pytest

from fedvault.client import site_config, supernode
from fedvault.common.errors import FederationError

REFUSED = "ERROR :     Exit Code: 305\n[code: 2004] Failed to activate SuperNode.\n"


def _site(tmp_path):
    table = {"name": "a", "coordinator": "c:1", "data": "d.csv", "insecure": True}
    return site_config.parse_site_config({"site": table}, base=tmp_path)


def _runs(monkeypatch, outcomes):
    left = list(outcomes)
    monkeypatch.setattr(supernode, "_run_once", lambda cfg, echo: left.pop(0))
    monkeypatch.setattr(supernode, "REJOIN_PAUSE", 0.0)
    return left


def test_a_known_site_is_retried_until_it_is_back_in(monkeypatch, tmp_path):
    cfg = _site(tmp_path)
    left = _runs(monkeypatch, [REFUSED, REFUSED, None])
    assert supernode._supervise(cfg, None, rejoin=True) == 0
    assert left == []


def test_a_new_site_started_with_its_coordinator_is_retried(monkeypatch, tmp_path):
    """The coordinator registers listed keys just after its Fleet API opens."""
    cfg = _site(tmp_path)
    left = _runs(monkeypatch, [REFUSED, None])
    assert supernode._supervise(cfg, None, rejoin=False) == 0
    assert left == []


def test_a_key_still_refused_after_the_window_is_named(monkeypatch, tmp_path):
    cfg = _site(tmp_path)
    monkeypatch.setattr(supernode, "REJOIN_WINDOW", -1.0)
    left = _runs(monkeypatch, [REFUSED, None])
    with pytest.raises(FederationError, match="refused this site's key"):
        supernode._supervise(cfg, None, rejoin=False)
    assert left == [None]


def test_acceptance_is_read_from_the_log_and_the_window_ends(monkeypatch, tmp_path):
    cfg = _site(tmp_path)
    cfg.state_dir.mkdir()
    assert not supernode._accepted_before(cfg)
    cfg.log.write_text("INFO :      SuperNode ID: 12345\n")
    assert supernode._accepted_before(cfg)
    monkeypatch.setattr(supernode, "REJOIN_WINDOW", -1.0)
    _runs(monkeypatch, [REFUSED, None])
    with pytest.raises(FederationError, match="refused this site's key"):
        supernode._supervise(cfg, None, rejoin=True)
