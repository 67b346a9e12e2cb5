"""Per-matrix and total sparsity of a model's linear layers."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..models import linear_modules


def sparsity_report(model: nn.Module, names: Iterable[str] | None = None) -> dict:
    """{name: {"sparsity", "zeros", "shape"}, ..., "total": {...}} for the given linears.

    names: the matrices to report (default: every linear except the output head). "total"
    sums over those matrices; "model_sparsity" counts zeros over all model parameters.
    """
    linears = linear_modules(model)
    chosen = list(linears) if names is None else list(names)
    report: dict = {}
    zeros = params = 0
    for name in chosen:
        w = linears[name].weight
        z = int((w == 0).sum())
        report[name] = {"sparsity": z / w.numel(), "zeros": z, "shape": list(w.shape)}
        zeros, params = zeros + z, params + w.numel()
    all_params = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    report["total"] = {"sparsity": zeros / params if params else 0.0, "zeros": zeros, "params": params,
                       "matrices": len(chosen), "model_sparsity": all_zeros / all_params if all_params else 0.0}
    return report
