"""Import torchvision beside a CPU-only torch.

PyPI's Linux torchvision wheels are CUDA builds. Next to torch's CPU wheel their
compiled operators cannot load (``libc10_cuda.so`` is missing), which torchvision
tolerates, but its meta registrations then fail on the two detection operators
``nms`` and ``qnms`` ("operator torchvision::nms does not exist") and the whole
package cannot be imported. fedvault uses only torchvision's pure-Python parts
(``models.resnet18``, ``transforms.v2``), so in that case the two operator schemas
are declared (without kernels: calling ``torchvision.ops.nms`` still fails) and the
import is retried. Where the compiled operators load, nothing is declared.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[torch.library.Library] = []  # keep the declarations alive


def torchvision() -> ModuleType:
    """The ``torchvision`` package, imported as described in the module docstring.

    Raises :class:`ImportError` when torchvision is not installed.
    """
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _declared:
            raise
    logger.info("torchvision's compiled operators did not load; using its Python parts")
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
    for schema in _MISSING_OPS:
        if not hasattr(torch.ops.torchvision, schema.split("(")[0]):
            library.define(schema)  # type: ignore[no-untyped-call]
    _declared.append(library)
    return importlib.import_module("torchvision")
