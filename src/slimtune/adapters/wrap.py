"""Wrapping named linear modules in adapter layers (every adapter kind: LoRA, AdaLoRA, PaCA)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .base import AdapterLayer, set_submodule


def wrap_linears(model: nn.Module, targets: list[str], make: Callable[[str, nn.Module], AdapterLayer],
                 kind: str, seed: int | None = None) -> dict[str, AdapterLayer]:
    """Freeze the model and replace each named linear module (nn.Linear or QuantLinear) by
    `make(name, module)` (in the base's train/eval mode: an adapter added to a model in eval mode must
    not apply dropout); returns the new layers by name. `kind` names the adapter in errors."""
    from ..quant.linear import QuantLinear

    if seed is not None:
        torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for name in targets:
        base = model.get_submodule(name)
        if isinstance(base, AdapterLayer):
            raise ConfigError(f"module {name} already has an adapter ({type(base).__name__}); a {kind} adapter "
                              "wraps a plain linear layer")
        if not isinstance(base, (nn.Linear, QuantLinear)):
            raise ConfigError(f"module {name} is a {type(base).__name__}, not a linear layer; {kind} targets "
                              "linear layers")
        layer = make(name, base)
        layer.train(base.training)
        set_submodule(model, name, layer)
        layers[name] = layer
    return layers
