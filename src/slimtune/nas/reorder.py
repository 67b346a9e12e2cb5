"""Unit order of width dimensions, so that every sub-network keeps a prefix that matters: by weight
magnitude before LoNAS training (`reorder`), or by first-order importance for EFTNAS (`reorder_model`).

Channel / head order of the frozen base before LoNAS training: sub-networks keep the first units
of each width dimension, so moving the most important ones first makes the kept prefix the one that
matters (the LoNAS reference keeps the original order; both are offered).

A width dimension's bindings all count the same units (MLP: channels; heads: KV groups, each q/o
binding a group of query heads, each k/v binding one KV head). A unit's score is the sum over the
bindings of the L2 norm of its weight slice (rows for 'out', columns for 'in'): `magnitude`. The
permutation moves whole units in every binding at once (rows with their biases, columns), so the
model computes the same function. It is applied to the base before the adapters are added and
recorded in ORDER_FILE beside the adapter, so loading the adapter applies it to the base again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError
from .elastic import Binding, Dimension, axis_size

ORDER_FILE = "width_order.json"
ORDERS = ("original", "magnitude")


def _units(model: nn.Module, d: Dimension) -> int:
    counts = {axis_size(model.get_submodule(b.module), b.axis) // b.unit for b in d.bindings}
    if len(counts) != 1:
        raise ConfigError(f"dimension {d.name}: its bindings count different numbers of units {sorted(counts)}")
    return counts.pop()


def _weight(module: nn.Module) -> nn.Linear:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"reordering needs float linear layers, not {type(base).__name__}"
                          + (": a quantized base cannot take a LoNAS / EFTNAS channel order (it would move weights "
                             "between quantization groups); use the float or sparse model it was quantized from"
                             if type(base).__name__ == "QuantLinear" else ""))
    return base


def magnitude_scores(model: nn.Module, d: Dimension) -> torch.Tensor:
    n = _units(model, d)
    score = torch.zeros(n, dtype=torch.float64)
    for b in d.bindings:
        w = _weight(model.get_submodule(b.module)).weight.detach().double()
        w = w if b.axis == "out" else w.t()
        score += w.reshape(n, -1).norm(dim=1)
    return score


@torch.no_grad()
def permute(model: nn.Module, d: Dimension, order: list[int]) -> None:
    """Move the units of every binding of `d` into `order` (order[k] = the old unit now at position k)."""
    for b in d.bindings:
        linear = _weight(model.get_submodule(b.module))
        idx = torch.tensor(order).repeat_interleave(b.unit) * b.unit + torch.arange(b.unit).repeat(len(order))
        idx = idx.to(linear.weight.device)
        if b.axis == "out":
            linear.weight.copy_(linear.weight[idx])
            if linear.bias is not None:
                linear.bias.copy_(linear.bias[idx])
        else:
            linear.weight.copy_(linear.weight[:, idx])


def reorder(model: nn.Module, dims: list[Dimension], how: str = "magnitude") -> dict[str, list[int]]:
    """Reorder the base's units of each width dimension by importance; returns {dimension: order}."""
    if how not in ORDERS:
        raise ConfigError(f"unknown width order {how!r}; choose from {', '.join(ORDERS)}")
    if how == "original":
        return {}
    orders = {}
    for d in dims:
        order = torch.argsort(magnitude_scores(model, d), descending=True, stable=True).tolist()
        permute(model, d, order)
        orders[d.name] = order
    return orders


def save_order(directory: str | Path, dims: list[Dimension], orders: dict[str, list[int]], how: str) -> None:
    if not orders:
        return
    by_name = {d.name: d for d in dims}
    data = {"version": 1, "score": how,
            "dimensions": {n: {"order": o, "bindings": [[b.module, b.axis, b.unit] for b in by_name[n].bindings]}
                           for n, o in orders.items()}}
    (Path(directory) / ORDER_FILE).write_text(json.dumps(data) + "\n")


def apply_saved_order(model: nn.Module, directory: str | Path) -> bool:
    """Re-apply a recorded order to a freshly loaded base (before its adapter is loaded)."""
    path = Path(directory) / ORDER_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
        for name, v in data["dimensions"].items():
            d = Dimension(name, [1], [Binding(str(m), str(a), int(u)) for m, a, u in v["bindings"]])
            for b in d.bindings:
                _weight(model.get_submodule(b.module))  # a quantized base: refused with the reason
            if _units(model, d) != len(v["order"]):
                raise ArtifactError(f"{path}: dimension {name} orders {len(v['order'])} units, the base has "
                                    f"{_units(model, d)}")
            permute(model, d, [int(i) for i in v["order"]])
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path} is not a valid width order ({e})") from e
    return True


def copy_order(source: str | Path, target: str | Path) -> None:
    path = Path(source) / ORDER_FILE
    if path.is_file():
        (Path(target) / ORDER_FILE).write_text(path.read_text())


# ---- EFTNAS: the order of first-order importance scores (nas/importance.py) --------------------

def importance_order(importance, name: str) -> torch.Tensor:
    """Unit indices by descending score (stable: equal scores keep their order)."""
    return torch.sort(-importance.scores[name], stable=True).indices


def reorder_model(model: nn.Module, importance, heads: bool = True, mlp: bool = True):
    """Permute the model's heads and neurons in place, most important first (EFTNAS), so every
    sub-network is a prefix; returns the importance in the new order (descending per dimension),
    which describes the reordered model."""
    from .importance import Importance, structure_dimensions

    dims = structure_dimensions(model, heads=heads, mlp=mlp)
    importance.check(dims)
    scores = dict(importance.scores)
    for d in dims:
        order = importance_order(importance, d.name)
        permute(model, d, order.tolist())
        scores[d.name] = importance.scores[d.name][order]
    return Importance(scores, dict(importance.kinds), importance.steps, importance.source)
