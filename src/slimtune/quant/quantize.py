"""The quantize stage: quantization methods registered with the compression skeleton, argument
validation, and in-place quantization (slimtune.compress does targeting, calibration and the run).

quantize_model replaces the target nn.Linear modules with QuantLinear modules (packed codes plus
QuantParams). Everything that can be wrong with the arguments is checked first, before any
calibration pass or rounding: bits, group size against every target's input width, method,
options, calibration settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..calibration import run_layerwise
from ..compress import (DEFAULT_CALIBRATION, DEFAULT_SKIP, CompressPlan, Compressed, Method, Registry,
                        calibrate, check_options, check_skip, choice, number, select_targets)
from ..compress import apply as run_plan
from ..errors import ConfigError, SlimtuneError
from ..models import linear_modules
from .gptq import gptq_quantize
from .linear import quant_linears, quantize_model_linears
from .params import DEFAULT_BITS, DEFAULT_GROUP_SIZE, OBSERVERS, QuantParams, check_bits, check_group_size
from .rtn import rtn_quantize

__all__ = ["DEFAULT_CALIBRATION", "DEFAULT_SKIP", "QUANTIZERS", "QuantizePlan", "Quantizer", "apply_plan",
           "quantize_model", "validate_quantize_args"]


@dataclass(frozen=True)
class Quantizer(Method):
    """One quantization method: a compress.Method whose compress(weights, stats, bits, group_size,
    symmetric, **options) returns one Compressed per weight (its dequantized weight, payload
    (QuantParams, uint8 codes [out, in]), info {"loss"} where the method estimates one). stacked()
    makes that from a function of one matrix and its Hessian. The method's knobs (GPTQ's act_order
    and damp, each method's observer) are its options."""

    @property
    def needs_hessian(self) -> bool:
        return self.stats == "hessian"


def stacked(quantize):
    """compress() from quantize(weight [out, in] float32, hessian [in, in] or None, bits, group_size,
    symmetric, **options) -> (QuantParams, uint8 codes, loss or None): the matrices of a group share
    one input, so their rows are independent given H and go as one stack."""
    def compress(weights, stats, bits, group_size, symmetric, **options):
        hessian = None if stats is None else stats.hessian
        w = weights[0] if len(weights) == 1 else torch.cat(weights)
        params, codes, loss = quantize(w, hessian, bits, group_size, symmetric, **options)
        out, start = [], 0
        for weight in weights:
            rows = slice(start, start + weight.shape[0])
            start += weight.shape[0]
            p = QuantParams(params.bits, params.group_size, params.symmetric, params.scales[rows], params.zeros[rows])
            c = codes[rows].contiguous()
            # loss: the method's own error estimate, for the stack the matrix was in
            out.append(Compressed(p.dequantize(c), (p, c), {} if loss is None else {"loss": loss}))
        return out
    return compress


def _rtn(weight, hessian, bits, group_size, symmetric, observer):
    return (*rtn_quantize(weight, bits, group_size, symmetric, observer), None)


def _gptq(weight, hessian, bits, group_size, symmetric, act_order, damp, observer):
    return gptq_quantize(weight, hessian, bits, group_size, symmetric, act_order=act_order, damp=damp,
                         observer=observer)


# GPTQ's default observer is imatrix: on the default model (INT4 g64/g192, dense and 50% sparse,
# bench/quantize.py) it lowers GPTQ's perplexity by 2-11% against min-max scales, and only with it
# is GPTQ below RTN at every setting. RTN has no calibration data, so no imatrix. act_order (static
# groups: no cost at inference) is llm-compressor's default too.
_OBSERVER = ("how each group's scale is chosen: minmax (the weights' range), mse (the shrunk range with the least "
             "rounding error) or imatrix (mse weighted by each input's mean square activation)")
QUANTIZERS = Registry("quantization", [
    Quantizer("rtn", None, stacked(_rtn), {"observer": ("minmax", choice("minmax", "mse", help=_OBSERVER))},
              "round-to-nearest on a min-max grid per group; no calibration"),
    Quantizer("gptq", "hessian", stacked(_gptq),
              {"act_order": (True, choice(True, False, help="quantize columns in order of decreasing Hessian "
                                                            "diagonal (static groups: contiguous in the export)")),
               "damp": (0.01, number(0.0, 1e6, help="Hessian dampening as a fraction of its mean diagonal")),
               "observer": ("imatrix", choice(*OBSERVERS, help=_OBSERVER))},
              "GPTQ: column-wise rounding with Hessian error compensation"),
])


@dataclass
class QuantizePlan(CompressPlan):
    """Validated arguments: everything quantize_model needs, decided before any work."""

    method: Quantizer
    bits: int
    group_size: int
    symmetric: bool
    options: dict[str, Any]
    targets: list[str]
    left_float: list[str]
    calibration: dict[str, Any] | None
    input_ids: torch.Tensor | None

    def config(self) -> dict[str, Any]:
        cfg = {"method": self.method.name, "bits": self.bits, "group_size": self.group_size,
               "symmetric": self.symmetric, **self.options}
        if self.method.calibrated:
            cfg["calibration"] = self.calibration
        return cfg

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, **self.options}

    def check(self, name: str, module: nn.Module, before: torch.Tensor, result: Compressed) -> None:
        # Every zero weight stays exactly zero (the sparse models of slimtune's pipelines).
        zero = before == 0
        after = result.weight == 0
        if not bool(after[zero].all()):
            raise SlimtuneError(f"internal error: quantizing {name} turned {int((~after[zero]).sum())} zero weights non-zero")


def validate_quantize_args(model: nn.Module, tokenizer=None, method: str = "rtn", bits: int = DEFAULT_BITS,
                           group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = True,
                           calibration: dict | None = None, skip: Sequence[str] = DEFAULT_SKIP,
                           options: dict | None = None) -> QuantizePlan:
    """Check every argument against the model; raise ConfigError/DataError before any work."""
    spec = QUANTIZERS.lookup(method)
    bits = check_bits(bits)
    if not isinstance(symmetric, bool):
        raise ConfigError(f"symmetric must be true or false, got {symmetric!r}")
    options = check_options(spec, options)
    skip = check_skip(skip)
    if quant_linears(model):
        raise ConfigError("the model is already quantized (it has QuantLinear modules); quantize the float model")
    linears = linear_modules(model)
    targets, left_float = select_targets(model, spec, linears, skip, "quantize")
    group_size = check_group_size(group_size, {n: linears[n].in_features for n in targets})
    cal, input_ids = calibrate(model, tokenizer, spec, calibration)
    return QuantizePlan(spec, bits, group_size, symmetric, options, targets, left_float, cal, input_ids)


# ---- quantizing ------------------------------------------------------------------------------

def apply_plan(model: nn.Module, plan: QuantizePlan, progress: bool = True) -> dict[str, dict]:
    """Quantize the plan's targets in place (nn.Linear -> QuantLinear); return per-layer details."""
    applied = run_plan(model, plan, progress=progress, runner=run_layerwise)
    quantize_model_linears(model, applied.payloads)
    return applied.details


def quantize_model(model: nn.Module, tokenizer=None, method: str = "rtn", bits: int = DEFAULT_BITS,
                   group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = True, calibration: dict | None = None,
                   skip: Sequence[str] = DEFAULT_SKIP, progress: bool = True, options: dict | None = None,
                   **knobs) -> dict:
    """Quantize `model`'s linear layers in place (they become QuantLinear); return a report.

    method: "rtn" or "gptq" (QUANTIZERS). bits: 2, 3, 4 or 8. group_size: inputs per group
    (must divide every target's input width) or -1 for one group per output row.
    symmetric: z = 2^(bits-1) and scale from max|w|; else min-max with an integer zero point.
    calibration ({source, n_samples, seq_len, seed, batch_size}): gptq only.
    options (or the same as keywords; None values are not given): the method's own, see
    QUANTIZERS: gptq act_order (columns in decreasing Hessian diagonal order, static groups),
    damp and observer ("minmax", "mse" or "imatrix"); rtn observer ("minmax" or "mse").
    skip: module-name patterns left in float (the output head always is).
    Returns {layer: {"shape", "zeros"[, "loss"]}, ..., "total": {...}}; "zeros" counts the zero weights
    of the input (all kept), "zeros_after" those of the quantized model (rounding adds some).
    """
    options = {**(options or {}), **{k: v for k, v in knobs.items() if v is not None}}
    plan = validate_quantize_args(model, tokenizer, method, bits, group_size, symmetric, calibration, skip, options)
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
