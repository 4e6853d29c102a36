"""Fixtures of the privacy tests: the in-process grid of tests/support."""

from local_grid import local_grid, make_contexts  # noqa: F401
