"""Smaller models with PyTorch's own tools: int8 dynamic quantization
(``torch.ao.quantization.quantize_dynamic``) and magnitude pruning
(``torch.nn.utils.prune``)."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """The model with every Linear layer quantized to int8 weights (activations
    quantized on the fly); runs on CPU."""
    with warnings.catch_warnings():
        # torch >= 2.9 marks torch.ao.quantization deprecated in favour of torchao;
        # it still ships and works, and adds no dependency.
        warnings.filterwarnings(
            "ignore", "torch.ao.quantization is deprecated", DeprecationWarning
        )
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {nn.Linear}, dtype=torch.qint8
        )
    return quantized
