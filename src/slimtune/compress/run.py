"""Running a plan: the direct pass (methods without calibration) or the layer-by-layer run.

For each group of target linears that read the same input (one linear in the direct pass; q/k/v,
gate/up, ... layer by layer), the method compresses the group's float32 weights given the
group's statistics; each new weight is written into its module at once (so the next layers'
calibration inputs come from the already-compressed ones), then the stage's invariant check runs
and the per-layer report entry is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..calibration import LayerContext, run_layerwise
from ..models import linear_modules, set_weight, tied_parameter_ids
from .plan import CompressPlan


@dataclass
class Compressed:
    """One matrix's result: the float weight its module holds from now on, what the stage keeps
    for its last step (quantization: (QuantParams, codes)), and extra per-layer report entries."""

    weight: torch.Tensor
    payload: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Applied:
    """details: per target {"shape", "zeros" (before), **info}, in the order compressed;
    payloads: per target, the results' payloads (those not None)."""

    details: dict[str, dict] = field(default_factory=dict)
    payloads: dict[str, Any] = field(default_factory=dict)


def apply(model: nn.Module, plan: CompressPlan, progress: bool = True,
          runner: Callable[..., None] | None = None) -> Applied:
    """Compress the plan's targets in place; runner: the layer-by-layer runner (default
    calibration.run_layerwise; a parameter so that a stage, or a test, can substitute it)."""
    method, settings = plan.method, plan.settings()
    tied = tied_parameter_ids(model)
    out = Applied()

    def group(names: list[str], modules: list[nn.Module], stats) -> None:
        # float32 copies (views of the weights when they are float32 already: results are written by
        # replacing a module's weight, never into it, except for tied weights, which are cloned)
        weights = [m.weight.detach().float() for m in modules]
        weights = [w.clone() if id(m.weight) in tied else w for m, w in zip(modules, weights)]
        results = method.compress(weights, stats, **settings)
        for name, module, before, result in zip(names, modules, weights, results, strict=True):
            result = result if isinstance(result, Compressed) else Compressed(result)
            out.details[name] = {"shape": list(before.shape), "zeros": int((before == 0).sum()), **result.info}
            if result.payload is not None:
                out.payloads[name] = result.payload
            set_weight(module, result.weight, tied)
            plan.check(name, module, before, result)

    if not method.calibrated:
        linears = linear_modules(model)
        for name in plan.targets:
            group([name], [linears[name]], None)
    else:
        def on_layer(ctx: LayerContext) -> None:
            for stats in ctx.stats:
                group(list(stats.names), [ctx.modules[n] for n in stats.names], stats)

        cal = plan.calibration
        runner = run_layerwise if runner is None else runner
        runner(model, plan.input_ids, on_layer, collect=(method.stats,), targets=plan.targets,
               batch_size=cal["batch_size"], progress=progress, desc=method.name,
               single_pass=cal["batch_size"] >= cal["n_samples"])
    return out
