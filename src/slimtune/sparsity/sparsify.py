"""The sparsify entry point: method registry, argument validation, and in-place pruning."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..architectures import block_linears, decoder_layers, matches_any
from ..calibration import LayerContext, run_layerwise
from ..data.calibration import check_calibration
from ..errors import ConfigError
from ..models import linear_modules, set_weight, tied_parameter_ids
from ..quant.linear import quant_linears
from .magnitude import magnitude_prune
from .masks import UNSTRUCTURED, check_exact, check_sparsity, parse_pattern, target_sparsity
from .report import sparsity_report
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_prune

# The output head is never pruned (nor are embeddings, which are not linear layers).
DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)
# batch_size >= n_samples: all samples in one batch, and every layer runs once (single pass, see
# calibration.run_layerwise); a smaller batch_size bounds activation memory at two passes per layer.
DEFAULT_CALIBRATION: dict[str, Any] = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0,
                                       "batch_size": 16}


# ---- methods -------------------------------------------------------------------------------

def _choice(*allowed):
    def check(name, value):
        if value not in allowed:
            raise ConfigError(f"option {name}={value!r} is not valid; choose from {', '.join(map(repr, allowed))}")
        return value
    return check


def _number(low: float, high: float = math.inf, integer: bool = False):
    def check(name, value):
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"option {name} must be {kind} in [{low}, {high}], got {value!r}")
        return value
    return check


@dataclass(frozen=True)
class Sparsifier:
    """One pruning method.

    prune(weights, stats, sparsity, nm, **options) -> pruned float32 copies of `weights`, a
    list of matrices that read the same input (stats: its InputStats, None for methods
    without calibration).
    """

    name: str
    stats: str | None                    # "sqnorm" | "hessian" | None (no calibration data)
    prune: Callable[..., list[torch.Tensor]]
    options: dict[str, tuple[Any, Callable]] = field(default_factory=dict)  # name -> (default, check)
    description: str = ""


def _magnitude(weights, stats, sparsity, nm, scope="matrix"):
    return [magnitude_prune(w, sparsity, nm, scope=scope) for w in weights]


def _wanda(weights, stats, sparsity, nm):
    return [wanda_prune(w, stats.sqnorm, sparsity, nm) for w in weights]


def _sparsegpt(weights, stats, sparsity, nm, damp=0.01, block_size=128):
    # Rows are independent given H, so matrices sharing an input are pruned as one stack.
    stacked = sparsegpt_prune(torch.cat([w.detach().float() for w in weights]), stats.hessian,
                              sparsity, nm, damp=damp, block_size=block_size)
    return list(stacked.split([w.shape[0] for w in weights]))


SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": Sparsifier("magnitude", None, _magnitude,
                            {"scope": ("matrix", _choice("matrix", "row"))},
                            "smallest |W| per matrix (or per row); no calibration"),
    "wanda": Sparsifier("wanda", "sqnorm", _wanda, {},
                        "|W_ij| * ||X_j||_2 per output row (or N:M group)"),
    "sparsegpt": Sparsifier("sparsegpt", "hessian", _sparsegpt,
                            {"damp": (0.01, _number(0.0, 1e6)), "block_size": (128, _number(1, 1 << 20, integer=True))},
                            "row-wise OBS with error propagation (SparseGPT)"),
}


# ---- validation ----------------------------------------------------------------------------

@dataclass
class SparsifyPlan:
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


def validate_sparsify_args(model: nn.Module, tokenizer, method: str, sparsity: float | None = None,
                           pattern: str = UNSTRUCTURED, calibration: dict | None = None,
                           skip: Sequence[str] = DEFAULT_SKIP, options: dict | None = None) -> SparsifyPlan:
    """Check every argument against the model; raise ConfigError/DataError before any pruning.

    sparsity: fraction of weights to zero in [0, 1); default 0.5 for unstructured, and for
    N:M the pattern's own 1 - N/M (an explicit different value is an error).
    """
    if method not in SPARSIFIERS:
        raise ConfigError(f"unknown sparsity method {method!r}; known methods: {', '.join(sorted(SPARSIFIERS))}")
    spec = SPARSIFIERS[method]
    nm = parse_pattern(pattern)
    if nm is None:
        sparsity = check_sparsity(0.5 if sparsity is None else sparsity)
    else:
        implied = target_sparsity(None, nm)
        if sparsity is not None and abs(check_sparsity(sparsity) - implied) > 1e-9:
            raise ConfigError(f"sparsity {sparsity} contradicts pattern {pattern!r}, which keeps {nm[0]} of "
                              f"every {nm[1]} weights (sparsity {implied:g}); omit sparsity or set it to {implied:g}")
        sparsity = implied

    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; accepted: {accepted}")
    options = {k: check(k, options[k]) if k in options else default for k, (default, check) in spec.options.items()}

    if isinstance(skip, str):
        skip = (skip,)
    if not all(isinstance(p, str) for p in skip):
        raise ConfigError(f"skip must be a list of module-name patterns (strings), got {skip!r}")
    linears = linear_modules(model)
    quantized = [] if linears else quant_linears(model)
    if quantized:
        bits = sorted({q.bits for q in quantized.values()})
        raise ConfigError(f"the model is quantized ({len(quantized)} INT{'/'.join(map(str, bits))} linear modules), "
                          "and pruning works on float weights: sparsify the float model, then quantize the "
                          "sparse result (the order of slimtune's pipelines)")
    # Every method prunes the same set: the linears of the transformer blocks, minus the
    # family's keep-dense modules and the skip list (calibrated methods need the blocks).
    if spec.stats is not None:
        decoder_layers(model)
    targets = [n for n in block_linears(model, linears) if not matches_any(n, skip)]
    if not targets:
        raise ConfigError(f"no linear module left to prune (skip={list(skip)}); linear modules: "
                          f"{', '.join(list(linears)[:8])}{' ...' if len(linears) > 8 else ''}")
    if nm is not None:
        for name in targets:
            width = linears[name].in_features
            if width % nm[1]:
                raise ConfigError(f"pattern {pattern!r} needs input widths divisible by {nm[1]}, but {name} "
                                  f"has {width} inputs; skip it (skip=[...]) or choose another M")
    left_dense = [n for n in linears if n not in set(targets)]

    cal, input_ids = None, None
    if spec.stats is not None:
        cal, input_ids = check_calibration(model, tokenizer, method, calibration, DEFAULT_CALIBRATION)
    return SparsifyPlan(spec, sparsity, pattern if nm is None else f"{nm[0]}:{nm[1]}", nm, targets,
                        options, cal, input_ids, left_dense)


# ---- pruning ---------------------------------------------------------------------------------

def apply_plan(model: nn.Module, plan: SparsifyPlan, progress: bool = True) -> None:
    """Prune the plan's target linears in place."""
    spec, linears = plan.method, linear_modules(model)
    tied = tied_parameter_ids(model)

    def _write(modules: list[nn.Linear], new: list[torch.Tensor]) -> None:
        for m, w in zip(modules, new):
            set_weight(m, w, tied)

    if spec.stats is None:
        for name in plan.targets:
            _write([linears[name]], spec.prune([linears[name].weight], None, plan.sparsity, plan.nm, **plan.options))
        return

    def on_layer(ctx: LayerContext) -> None:
        for stats in ctx.stats:
            modules = [ctx.modules[n] for n in stats.names]
            _write(modules, spec.prune([m.weight for m in modules], stats, plan.sparsity, plan.nm, **plan.options))

    cal = plan.calibration
    run_layerwise(model, plan.input_ids, on_layer, collect=(spec.stats,), targets=plan.targets,
                  batch_size=cal["batch_size"], progress=progress, desc=f"{spec.name}",
                  single_pass=cal["batch_size"] >= cal["n_samples"])


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
    linears = linear_modules(model)
    scope = plan.options.get("scope", "row")
    for name in plan.targets:  # a broken promise here is a bug in slimtune, not a user error
        check_exact(linears[name].weight, plan.sparsity, plan.nm, scope=scope, allow_extra_zeros=True)
    report = sparsity_report(model, plan.targets)
    report["total"].update({"method": method, "pattern": plan.pattern, "target_sparsity": plan.sparsity,
                            "options": plan.options, "calibration": plan.calibration,
                            "left_dense": plan.left_dense, "wall_time_s": round(wall, 3)})
    return report
