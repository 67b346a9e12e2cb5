"""Reordering heads and FFN neurons by importance (EFTNAS), so every sub-network is a prefix.

Per width dimension the units are sorted by importance, most important first, and every binding's
weights follow: an 'out' binding's row blocks (and bias entries), an 'in' binding's column blocks.
A head (a KV group) moves with its q/k/v rows and its o columns; a neuron with its gate/up rows and its
down column. Attention sums over heads and the MLP over neurons, so the reordered model computes the
same function (up to float summation order)."""

from __future__ import annotations

import torch
from torch import nn

from .importance import Importance, _linear, structure_dimensions


def importance_order(importance: Importance, name: str) -> torch.Tensor:
    """Unit indices by descending score (stable: equal scores keep their order)."""
    scores = importance.scores[name]
    return torch.sort(-scores, stable=True).indices


@torch.no_grad()
def _permute(module: nn.Linear, axis: str, unit: int, order: torch.Tensor) -> None:
    index = (order[:, None] * unit + torch.arange(unit)).reshape(-1).to(module.weight.device)
    if axis == "out":
        module.weight.copy_(module.weight[index])
        if module.bias is not None:
            module.bias.copy_(module.bias[index])
    else:
        module.weight.copy_(module.weight[:, index])


def reorder_model(model: nn.Module, importance: Importance, heads: bool = True, mlp: bool = True) -> Importance:
    """Permute the model's heads and neurons in place, most important first; returns the importance in the
    new order (descending per dimension), which describes the reordered model."""
    dims = structure_dimensions(model, heads=heads, mlp=mlp)
    importance.check(dims)
    scores = dict(importance.scores)
    for d in dims:
        order = importance_order(importance, d.name)
        for b in d.bindings:
            _permute(_linear(model, b.module), b.axis, b.unit, order)
        scores[d.name] = importance.scores[d.name][order]
    return Importance(scores, dict(importance.kinds), importance.steps, importance.source)
