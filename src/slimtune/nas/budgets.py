"""EFTNAS search spaces from importance: budgets, thresholds, per-layer width choices.

Cost of a sub-network (`CostModel`), exact for widths because every unit of a dimension costs the same:
  params  every parameter of the model, the bound linear layers at their kept widths (biases of kept rows)
  macs    multiply-accumulates per token: every linear layer's weights at their kept widths, plus the
          attention products (QKᵀ and AV: 2·seq_len·head_dim per kept query head and token)
Embeddings count as parameters, not as MACs (a lookup).

`generate_space`: N budgets evenly spaced between `min_fraction` and 1 of the full model's cost; per
budget a threshold on importance is bisected until the kept units meet the budget within `tolerance`
(±1% by default). Heads and neurons are compared through their percentile rank within their kind (a
head's raw score sums thousands of weights, a neuron's far fewer), so a threshold t keeps the units
whose percentile is ≥ t, at least `min_units` per dimension. Where a head's cost jumps over the
tolerance band, the band is reached by adding the next neurons in importance order. Kept units are
always each layer's most important ones, so after reordering (`nas.reorder`) every choice is a prefix.
Per dimension the union of kept widths over the budgets, sorted descending, is its space; a dimension
whose smallest kept width is under `skip_fraction` of its full width is a skip candidate. With `skip`, a
skip candidate's choices end in 0: the sub-block (that layer's attention or MLP) may be skipped, costing
nothing of what the dimension binds (skipping.py). The budgets' own widths are unchanged (each meets its
budget); the 0 is one more choice for the super-network and the search.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .cost import attention_macs
from .elastic import Dimension
from .importance import Importance, dimension_kind, space_from_widths, structure_dimensions

METRICS = ("macs", "params")


@dataclass
class CostModel:
    total: int                       # the full model
    constant: int                    # what no dimension changes
    per_unit: dict[str, int]         # dimension -> cost of one unit
    full: dict[str, int]             # dimension -> unit count

    def cost(self, widths: dict[str, int]) -> int:
        return self.constant + sum(self.per_unit[n] * widths.get(n, self.full[n]) for n in self.per_unit)


def cost_model(model: nn.Module, dims: list[Dimension], metric: str = "macs", seq_len: int = 128) -> CostModel:
    if metric not in METRICS:
        raise ConfigError(f"unknown cost metric {metric!r}; choose from {', '.join(METRICS)}")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if metric == "params":
        total = sum(p.numel() for p in model.parameters())
    else:
        total = sum(m.weight.numel() for m in linears.values())
    per_unit, full = {}, {}
    for d in dims:
        cost = 0
        for b in d.bindings:
            m = linears[b.module]
            cost += b.unit * (m.in_features if b.axis == "out" else m.out_features)
            if metric == "params" and b.axis == "out" and m.bias is not None:
                cost += b.unit
        if metric == "macs" and dimension_kind(d) == "heads":
            q = d.bindings[0]  # q 'out': heads per group x head dim
            attention = attention_macs(q.unit, seq_len)
            cost += attention
            total += attention * d.choices[0]
        per_unit[d.name], full[d.name] = cost, d.choices[0]
    constant = total - sum(per_unit[n] * full[n] for n in per_unit)
    return CostModel(total, constant, per_unit, full)


def _percentiles(importance: Importance, dims: list[Dimension]) -> list[tuple[float, float, str, int]]:
    """(percentile within kind, raw score, dimension, rank k within the dimension from 1) for every unit,
    most important first."""
    by_kind: dict[str, list[tuple[float, str, int]]] = {}
    for d in dims:
        for i, s in enumerate(importance.scores[d.name].tolist()):
            by_kind.setdefault(dimension_kind(d), []).append((s, d.name, i))
    out = []
    for units in by_kind.values():
        units.sort(key=lambda u: (u[0], u[1], -u[2]))  # ascending score; ties: deterministic
        n = len(units)
        out += [(r / max(n - 1, 1), s, name, i) for r, (s, name, i) in enumerate(units)]
    out.sort(key=lambda u: (-u[0], -u[1], u[2], u[3]))
    seen: dict[str, int] = {}
    ranked = []
    for p, s, name, _ in out:
        seen[name] = seen.get(name, 0) + 1
        ranked.append((p, s, name, seen[name]))
    return ranked


def _kept(units, threshold: float, dims: list[Dimension], min_units: int) -> dict[str, int]:
    """Per dimension, the units at or over the threshold (its top k: units come most important first)."""
    widths = {d.name: min(min_units, d.choices[0]) for d in dims}
    for p, _, name, k in units:
        if p >= threshold and k > widths[name]:
            widths[name] = k
    return widths


def budget_widths(units, dims, costs: CostModel, target: float, tolerance: float, min_units: int,
                  iterations: int = 60) -> tuple[dict[str, int], float]:
    """(widths, threshold) meeting `target` within `tolerance` (relative)."""
    lo, hi = 0.0, 1.0 + 1e-9  # cost(lo) is the most, cost(hi) the least
    if costs.cost(_kept(units, hi, dims, min_units)) > target * (1 + tolerance):
        raise ConfigError(f"budget {target:.4g} is below the smallest sub-network ({min_units} unit(s) per dimension: "
                          f"{costs.cost(_kept(units, hi, dims, min_units)):.4g}); raise the minimum budget")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if costs.cost(_kept(units, mid, dims, min_units)) >= target:
            lo = mid
        else:
            hi = mid
    over, under = _kept(units, lo, dims, min_units), _kept(units, hi, dims, min_units)
    best = min((over, under), key=lambda w: abs(costs.cost(w) - target))
    if abs(costs.cost(best) - target) <= tolerance * target:
        return best, lo if best is over else hi
    # Into the band with units of the cheapest kind alone: add the next ones in importance order to the
    # sub-network under the budget, else drop the least important kept ones from the one over it.
    kinds = {dimension_kind(d): costs.per_unit[d.name] for d in dims}
    cheap = min(kinds, key=kinds.get)
    for widths, order, step in ((dict(under), units, 1), (dict(over), units[::-1], -1)):
        for _, _, name, k in order:
            inside = abs(costs.cost(widths) - target) <= tolerance * target
            if inside or (step > 0 and costs.cost(widths) > target) or (step < 0 and costs.cost(widths) < target):
                break
            if name.rsplit(":", 1)[-1] == cheap and k == widths[name] + (1 if step > 0 else 0) \
                    and widths[name] + step >= min_units:
                widths[name] += step
        if abs(costs.cost(widths) - target) <= tolerance * target:
            return widths, hi if step > 0 else lo
    raise ConfigError(f"no sub-network meets budget {target:.4g} within {tolerance:.1%} (closest "
                      f"{costs.cost(best):.4g}): the units are too coarse for this tolerance")


def budget_fractions(n: int, min_fraction: float) -> list[float]:
    if n < 1 or not 0 < min_fraction <= 1:
        raise ConfigError(f"budgets need n >= 1 and 0 < min_fraction <= 1, got {n}, {min_fraction}")
    if n == 1:
        return [min_fraction]
    return [round(min_fraction + (1 - min_fraction) * i / (n - 1), 6) for i in range(n)]


def generate_space(model: nn.Module, importance: Importance, budgets: int | list[float] = 5,
                   min_fraction: float = 0.25, metric: str = "macs", tolerance: float = 0.01, seq_len: int = 128,
                   min_units: int = 1, skip_fraction: float = 0.02, heads: bool = True, mlp: bool = True,
                   skip: bool = False) -> dict:
    """The EFTNAS search space of `model` from its importance (module docstring). `budgets`: a count of
    evenly spaced fractions from `min_fraction` to 1, or the fractions themselves. Returns a JSON-ready
    dict: metric, full cost, per budget {fraction, target, cost, relative_error, threshold, widths}, the
    per-dimension `space` (descending choices) and `skip_candidates` (with `skip`, their choices end in 0);
    `space_from_widths(model, result["space"])` is the SearchSpace."""
    dims = structure_dimensions(model, heads=heads, mlp=mlp)
    if not dims:
        raise ConfigError("no width dimensions: enable heads and/or mlp")
    importance.check(dims)
    fractions = budget_fractions(budgets, min_fraction) if isinstance(budgets, int) else [float(f) for f in budgets]
    if any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"budget fractions lie in (0, 1], got {fractions}")
    costs = cost_model(model, dims, metric, seq_len)
    units = _percentiles(importance, dims)
    rows = []
    for f in sorted(set(fractions), reverse=True):
        target = f * costs.total
        widths, threshold = budget_widths(units, dims, costs, target, tolerance, min_units)
        cost = costs.cost(widths)
        rows.append({"fraction": f, "target": target, "cost": cost, "relative_error": (cost - target) / target,
                     "threshold": threshold, "widths": widths})
    space = {d.name: sorted({r["widths"][d.name] for r in rows} | {d.choices[0]}, reverse=True) for d in dims}
    candidates = [n for n, c in space.items() if c[-1] < skip_fraction * costs.full[n]]
    if skip:
        for n in candidates:
            space[n].append(0)
    return {"metric": metric, "seq_len": seq_len if metric == "macs" else None, "full": costs.total,
            "tolerance": tolerance, "budgets": rows, "space": space, "skip_candidates": candidates, "skip": skip,
            "skip_fraction": skip_fraction}


def format_space(result: dict) -> str:
    """A printable summary: one line per budget, then each dimension's choices."""
    lines = [f"{result['metric']} of the full model: {result['full']:,}"]
    for r in result["budgets"]:
        lines.append(f"  budget {r['fraction']:.3f}: {r['cost']:,} ({r['relative_error']:+.2%} of the target)")
    for name, choices in result["space"].items():
        lines.append(f"  {name}: {choices}")
    if result["skip_candidates"]:
        what = "skippable (choice 0)" if result.get("skip") else "skip candidates (not searched; space --skip adds 0)"
        lines.append(f"  {what}: {', '.join(result['skip_candidates'])}")
    return "\n".join(lines)


__all__ = ["METRICS", "CostModel", "cost_model", "generate_space", "format_space", "budget_fractions",
           "space_from_widths"]
