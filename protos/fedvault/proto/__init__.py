"""fedvault's own wire contracts (.proto) and their generated, checked-in stubs.

Public modules are listed in ``__all__``; import them by name.
"""

__all__ = [
    "summary_pb2",
]
