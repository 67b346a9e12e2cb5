"""The sparsify stage: pruning methods registered with the compression skeleton, argument
validation, and in-place pruning (slimtune.compress does targeting, calibration and the run)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..compress import (DEFAULT_CALIBRATION, DEFAULT_SKIP, CompressPlan, Method, Registry, calibrate,
                        check_options, check_skip, choice, number, select_targets)
from ..compress import apply as run_plan
from ..errors import ConfigError
from ..models import linear_modules
from ..quant.linear import quant_linears
from .magnitude import magnitude_prune
from .masks import UNSTRUCTURED, check_exact, check_sparsity, parse_pattern, target_sparsity
from .report import sparsity_report
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_prune

__all__ = ["DEFAULT_CALIBRATION", "DEFAULT_SKIP", "SPARSIFIERS", "Sparsifier", "SparsifyPlan", "apply_plan",
           "sparsify_model", "validate_sparsify_args"]

# A pruning method is a compress.Method whose compress(weights, stats, sparsity, nm, **options)
# returns pruned float32 copies of `weights` (a list of matrices that read the same input).
Sparsifier = Method


# ---- methods -------------------------------------------------------------------------------

def _magnitude(weights, stats, sparsity, nm, scope="matrix"):
    return [magnitude_prune(w, sparsity, nm, scope=scope) for w in weights]


def _wanda(weights, stats, sparsity, nm):
    return [wanda_prune(w, stats.sqnorm, sparsity, nm) for w in weights]


def _sparsegpt(weights, stats, sparsity, nm, damp=0.01, block_size=128):
    # Rows are independent given H, so matrices sharing an input are pruned as one stack.
    stacked = sparsegpt_prune(torch.cat(weights), stats.hessian, sparsity, nm, damp=damp, block_size=block_size)
    return list(stacked.split([w.shape[0] for w in weights]))


SPARSIFIERS = Registry("sparsity", [
    Sparsifier("magnitude", None, _magnitude,
               {"scope": ("matrix", choice("matrix", "row", help="where the smallest weights are counted: per matrix "
                                                                 "or per output row"))},
               "smallest |W| per matrix (or per row); no calibration"),
    Sparsifier("wanda", "sqnorm", _wanda, {}, "|W_ij| * ||X_j||_2 per output row (or N:M group)"),
    Sparsifier("sparsegpt", "hessian", _sparsegpt,
               {"damp": (0.01, number(0.0, 1e6, help="Hessian dampening as a fraction of its mean diagonal")),
                "block_size": (128, number(1, 1 << 20, integer=True, help="columns per block"))},
               "row-wise OBS with error propagation (SparseGPT)"),
])


# ---- validation ----------------------------------------------------------------------------

@dataclass
class SparsifyPlan(CompressPlan):
    """Validated arguments: everything sparsify_model needs, decided before any work."""

    method: Sparsifier
    sparsity: float
    pattern: str
    nm: tuple[int, int] | None
    targets: list[str]
    options: dict[str, Any]
    calibration: dict[str, Any] | None
    input_ids: torch.Tensor | None
    left_dense: list[str]          # linears not pruned (skipped, or outside the decoder layers)

    def config(self) -> dict[str, Any]:
        return {"method": self.method.name, "sparsity": self.sparsity, "pattern": self.pattern,
                "options": self.options, "calibration": self.calibration}

    def settings(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "nm": self.nm, **self.options}

    def check(self, name: str, module: nn.Module, before: torch.Tensor, result) -> None:
        # Exactly the promised zeros (or more, where the weight held zeros before).
        check_exact(module.weight, self.sparsity, self.nm, scope=self.options.get("scope", "row"),
                    allow_extra_zeros=True)


def validate_sparsify_args(model: nn.Module, tokenizer, method: str, sparsity: float | None = None,
                           pattern: str = UNSTRUCTURED, calibration: dict | None = None,
                           skip: Sequence[str] = DEFAULT_SKIP, options: dict | None = None) -> SparsifyPlan:
    """Check every argument against the model; raise ConfigError/DataError before any pruning.

    sparsity: fraction of weights to zero in [0, 1); default 0.5 for unstructured, and for
    N:M the pattern's own 1 - N/M (an explicit different value is an error).
    """
    spec = SPARSIFIERS.lookup(method)
    nm = parse_pattern(pattern)
    if nm is None:
        sparsity = check_sparsity(0.5 if sparsity is None else sparsity)
    else:
        implied = target_sparsity(None, nm)
        if sparsity is not None and abs(check_sparsity(sparsity) - implied) > 1e-9:
            raise ConfigError(f"sparsity {sparsity} contradicts pattern {pattern!r}, which keeps {nm[0]} of "
                              f"every {nm[1]} weights (sparsity {implied:g}); omit sparsity or set it to {implied:g}")
        sparsity = implied
    options = check_options(spec, options)
    skip = check_skip(skip)
    linears = linear_modules(model)
    quantized = [] if linears else quant_linears(model)
    if quantized:
        bits = sorted({q.bits for q in quantized.values()})
        raise ConfigError(f"the model is quantized ({len(quantized)} INT{'/'.join(map(str, bits))} linear modules), "
                          "and pruning works on float weights: sparsify the float model, then quantize the "
                          "sparse result (the order of slimtune's pipelines)")
    targets, left_dense = select_targets(model, spec, linears, skip, "prune")
    if nm is not None:
        for name in targets:
            width = linears[name].in_features
            if width % nm[1]:
                raise ConfigError(f"pattern {pattern!r} needs input widths divisible by {nm[1]}, but {name} "
                                  f"has {width} inputs; skip it (skip=[...]) or choose another M")
    cal, input_ids = calibrate(model, tokenizer, spec, calibration)
    return SparsifyPlan(spec, sparsity, pattern if nm is None else f"{nm[0]}:{nm[1]}", nm, targets,
                        options, cal, input_ids, left_dense)


# ---- pruning ---------------------------------------------------------------------------------

def apply_plan(model: nn.Module, plan: SparsifyPlan, progress: bool = True) -> None:
    """Prune the plan's target linears in place (checking each one's zeros)."""
    run_plan(model, plan, progress=progress)


def sparsify_model(model: nn.Module, tokenizer, method: str, sparsity: float | None = None,
                   pattern: str = UNSTRUCTURED, calibration: dict | None = None,
                   skip: Sequence[str] = DEFAULT_SKIP, options: dict | None = None,
                   progress: bool = True) -> dict:
    """Prune `model` in place with a registered method; return the sparsity report.

    method: one of SPARSIFIERS ("magnitude", "wanda", "sparsegpt").
    pattern: "unstructured" (floor(in * sparsity) zeros in every row; magnitude defaults to
             whole-matrix ranking) or "N:M" (keep N of every M consecutive inputs), e.g. "2:4".
    calibration: {source, n_samples, seq_len, seed, batch_size} (defaults DEFAULT_CALIBRATION);
             source is "news", "wiki", a text file path or the text itself.
    skip: module-name patterns left dense (suffix, exact name or glob).
    options: method options (magnitude: scope; sparsegpt: damp, block_size).
    Returns {matrix name: {"sparsity", "zeros", "shape"}, ..., "total": {...}}.
    """
    plan = validate_sparsify_args(model, tokenizer, method, sparsity, pattern, calibration, skip, options)
    started = time.perf_counter()
    apply_plan(model, plan, progress=progress)
    wall = time.perf_counter() - started
    report = sparsity_report(model, plan.targets)
    report["total"].update({"method": method, "pattern": plan.pattern, "target_sparsity": plan.sparsity,
                            "options": plan.options, "calibration": plan.calibration,
                            "left_dense": plan.left_dense, "wall_time_s": round(wall, 3)})
    return report
