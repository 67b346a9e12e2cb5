"""The quantize entry point: method registry, argument validation, and in-place quantization.

quantize_model replaces the target nn.Linear modules with QuantLinear modules (packed codes plus
QuantParams). Everything that can be wrong with the arguments is checked first, before any
calibration pass or rounding: bits, group size against every target's input width, method,
options, calibration settings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..architectures import block_linears, decoder_layers, matches_any
from ..calibration import LayerContext, run_layerwise
from ..data.calibration import check_calibration
from ..errors import ConfigError, SlimtuneError
from ..models import linear_modules, set_weight
from .gptq import gptq_quantize
from .linear import quant_linears, quantize_model_linears
from .params import QuantParams, check_bits, check_group_size, check_observer
from .rtn import rtn_quantize

DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)
# batch_size >= n_samples: every layer runs once, each group of linears quantized from the inputs it
# gets from the already-quantized linears before it (single pass, see calibration.run_layerwise);
# a smaller batch_size bounds activation memory at two passes per layer.
DEFAULT_CALIBRATION: dict[str, Any] = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0,
                                       "batch_size": 16}


@dataclass(frozen=True)
class Quantizer:
    """One quantization method.

    quantize(weight [out, in] float32, hessian [in, in] or None, bits, group_size, symmetric,
    act_order, damp, observer) -> (QuantParams, uint8 codes [out, in], loss or None). Methods
    with needs_hessian run layer by layer on calibration data; rows sharing an input come
    stacked. observers: the scale choices it offers (params.OBSERVERS), the first the default.
    """

    name: str
    needs_hessian: bool
    quantize: Callable[..., tuple[QuantParams, torch.Tensor, float | None]]
    observers: tuple[str, ...]
    description: str = ""


def _rtn(weight, hessian, bits, group_size, symmetric, act_order=False, damp=0.0, observer="minmax"):
    return (*rtn_quantize(weight, bits, group_size, symmetric, observer), None)


def _gptq(weight, hessian, bits, group_size, symmetric, act_order=False, damp=0.01, observer="imatrix"):
    return gptq_quantize(weight, hessian, bits, group_size, symmetric, act_order=act_order, damp=damp,
                         observer=observer)


# GPTQ's default observer is imatrix: on the default model (INT4 g64/g192, dense and 50% sparse,
# bench/quantize.py) it lowers GPTQ's perplexity by 2-11% against min-max scales, and only with it
# is GPTQ below RTN at every setting. RTN has no calibration data, so no imatrix.
QUANTIZERS: dict[str, Quantizer] = {
    "rtn": Quantizer("rtn", False, _rtn, ("minmax", "mse"),
                     "round-to-nearest on a min-max grid per group; no calibration"),
    "gptq": Quantizer("gptq", True, _gptq, ("imatrix", "minmax", "mse"),
                      "GPTQ: column-wise rounding with Hessian error compensation"),
}


@dataclass
class QuantizePlan:
    """Validated arguments: everything quantize_model needs, decided before any work."""

    method: Quantizer
    bits: int
    group_size: int
    symmetric: bool
    act_order: bool
    damp: float
    observer: str
    targets: list[str]
    left_float: list[str]
    calibration: dict[str, Any] | None
    input_ids: torch.Tensor | None

    def config(self) -> dict[str, Any]:
        cfg = {"method": self.method.name, "bits": self.bits, "group_size": self.group_size,
               "symmetric": self.symmetric, "observer": self.observer}
        if self.method.needs_hessian:
            cfg.update(act_order=self.act_order, damp=self.damp, calibration=self.calibration)
        return cfg


def validate_quantize_args(model: nn.Module, tokenizer=None, method: str = "rtn", bits: int = 4,
                           group_size: int = 64, symmetric: bool = True, act_order: bool | None = None,
                           damp: float = 0.01, calibration: dict | None = None,
                           skip: Sequence[str] = DEFAULT_SKIP, observer: str | None = None) -> QuantizePlan:
    """Check every argument against the model; raise ConfigError/DataError before any work."""
    if method not in QUANTIZERS:
        raise ConfigError(f"unknown quantization method {method!r}; known methods: {', '.join(sorted(QUANTIZERS))}")
    spec = QUANTIZERS[method]
    bits = check_bits(bits)
    observer = spec.observers[0] if observer is None else check_observer(observer)
    if observer not in spec.observers:
        raise ConfigError(f"observer {observer!r} weighs rounding errors by calibration activations, which {method} "
                          f"does not collect; {method} offers {', '.join(spec.observers)} (or use gptq)")
    if act_order is None:
        act_order = spec.needs_hessian
    for name, value in (("symmetric", symmetric), ("act_order", act_order)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    if act_order and not spec.needs_hessian:
        raise ConfigError(f"act_order orders columns by the calibration Hessian; it applies to gptq, not {method!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < math.inf:
        raise ConfigError(f"damp must be a non-negative number (fraction of the mean Hessian diagonal), got {damp!r}")
    if isinstance(skip, str):
        skip = (skip,)
    if not all(isinstance(p, str) for p in skip):
        raise ConfigError(f"skip must be a list of module-name patterns (strings), got {skip!r}")
    if quant_linears(model):
        raise ConfigError("the model is already quantized (it has QuantLinear modules); quantize the float model")

    linears = linear_modules(model)
    # Both methods quantize the same set: the linears inside the stack of transformer blocks,
    # minus the family's keep-dense modules (a model without blocks can still be rounded with
    # RTN, but not calibrated layer by layer).
    if spec.needs_hessian:
        decoder_layers(model)
    targets = [n for n in block_linears(model, linears) if not matches_any(n, skip)]
    if not targets:
        raise ConfigError(f"no linear module left to quantize (skip={list(skip)}); linear modules: "
                          f"{', '.join(list(linears)[:8]) or 'none'}{' ...' if len(linears) > 8 else ''}")
    group_size = check_group_size(group_size, {n: linears[n].in_features for n in targets})

    cal, input_ids = (None, None)
    if spec.needs_hessian:
        cal, input_ids = check_calibration(model, tokenizer, method, calibration, DEFAULT_CALIBRATION)
    chosen = set(targets)
    return QuantizePlan(spec, bits, group_size, symmetric, act_order, float(damp), observer, targets,
                        [n for n in linears if n not in chosen], cal, input_ids)


# ---- quantizing ------------------------------------------------------------------------------

def _zeros_kept(name: str, before: torch.Tensor, params: QuantParams, codes: torch.Tensor) -> None:
    # A broken promise here is a bug in slimtune, not a user error.
    after = params.dequantize(codes) == 0
    if not bool(after[before].all()):
        raise SlimtuneError(f"internal error: quantizing {name} turned {int((~after[before]).sum())} zero weights non-zero")


def apply_plan(model: nn.Module, plan: QuantizePlan, progress: bool = True) -> dict[str, dict]:
    """Quantize the plan's targets in place (nn.Linear -> QuantLinear); return per-layer details."""
    linears = linear_modules(model)
    results: dict[str, tuple[QuantParams, torch.Tensor]] = {}
    details: dict[str, dict] = {}

    def record(name: str, weight: torch.Tensor, params: QuantParams, codes: torch.Tensor, loss=None):
        _zeros_kept(name, weight == 0, params, codes)
        results[name] = (params, codes)
        details[name] = {"shape": list(weight.shape), "zeros": int((weight == 0).sum())}
        if loss is not None:  # the method's own error estimate, for the stack the matrix was in
            details[name]["loss"] = loss

    args = (plan.bits, plan.group_size, plan.symmetric, plan.act_order, plan.damp, plan.observer)
    fn = plan.method.quantize
    if not plan.method.needs_hessian:
        for name in plan.targets:
            w = linears[name].weight.detach().float()
            params, codes, loss = fn(w, None, *args)
            record(name, w, params, codes, loss)
    else:
        def on_layer(ctx: LayerContext) -> None:
            for stats in ctx.stats:
                modules = [ctx.modules[n] for n in stats.names]
                weights = [m.weight.detach().float() for m in modules]
                # Rows are independent given H, so matrices sharing an input are one stack.
                params, codes, loss = fn(torch.cat(weights), stats.hessian, *args)
                start = 0
                for name, m, w in zip(stats.names, modules, weights):
                    rows = slice(start, start + w.shape[0])
                    start += w.shape[0]
                    p = QuantParams(params.bits, params.group_size, params.symmetric,
                                    params.scales[rows], params.zeros[rows])
                    c = codes[rows].contiguous()
                    record(name, w, p, c, loss)
                    # The next block's inputs must come from this quantized block. (Block linears
                    # are never tied to another module, so set_weight needs no tie set.)
                    set_weight(m, p.dequantize(c))

        cal = plan.calibration
        run_layerwise(model, plan.input_ids, on_layer, collect=("hessian",), targets=plan.targets,
                      batch_size=cal["batch_size"], progress=progress, desc=plan.method.name,
                      single_pass=cal["batch_size"] >= cal["n_samples"])
    quantize_model_linears(model, results)
    return details


def quantize_model(model: nn.Module, tokenizer=None, method: str = "rtn", bits: int = 4,
                   group_size: int = 64, symmetric: bool = True, act_order: bool | None = None,
                   damp: float = 0.01, calibration: dict | None = None,
                   skip: Sequence[str] = DEFAULT_SKIP, progress: bool = True, observer: str | None = None) -> dict:
    """Quantize `model`'s linear layers in place (they become QuantLinear); return a report.

    method: "rtn" or "gptq" (QUANTIZERS). bits: 2, 3, 4 or 8. group_size: inputs per group
    (must divide every target's input width) or -1 for one group per output row.
    symmetric: z = 2^(bits-1) and scale from max|w|; else min-max with an integer zero point.
    act_order, damp, calibration ({source, n_samples, seq_len, seed, batch_size}): gptq only;
    act_order None means on for gptq (static groups: no cost at inference; llm-compressor's default).
    observer: how group scales are chosen, "minmax", "mse" or "imatrix" (gptq only; its
    default); None takes the method's default (rtn: minmax).
    skip: module-name patterns left in float (the output head always is).
    Returns {layer: {"shape", "zeros"[, "loss"]}, ..., "total": {...}}; "zeros" counts the zero weights
    of the input (all kept), "zeros_after" those of the quantized model (rounding adds some).
    """
    plan = validate_quantize_args(model, tokenizer, method, bits, group_size, symmetric, act_order,
                                  damp, calibration, skip, observer)
    started = time.perf_counter()
    details = apply_plan(model, plan, progress=progress)
    wall = time.perf_counter() - started
    qls = quant_linears(model)
    n_weights = sum(m.in_features * m.out_features for m in qls.values())
    stored = sum(m.storage_bytes() for m in qls.values())
    report: dict[str, Any] = dict(details)
    zeros_after = sum(int((m.dequantized_weight() == 0).sum()) for m in qls.values())
    report["total"] = {**plan.config(), "layers": len(qls), "weights": n_weights,
                       "zeros": sum(d["zeros"] for d in details.values()), "zeros_after": zeros_after,
                       "bytes_per_weight": round(stored / n_weights, 4),
                       "left_float": plan.left_float, "wall_time_s": round(wall, 3)}
    return report
