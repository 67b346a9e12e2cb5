"""AdaLoRA (Zhang et al. 2023): an SVD-form update P·Λ·Q per module whose singular values are pruned
to a total rank budget during training.

`AdaLoraLinear` is a `LoraLinear` whose factors are (Λ·Q, P): lora_A = Q (r × in), lora_E = the
diagonal Λ (r × 1, starts at zero), lora_B = P (out × r), update s·P·Λ·Q with s = alpha / init_r. So
the adapter contract, the fused forward, the SparseMask / QuantAware variants (SparsePEFT: zeros kept;
QA-SparsePEFT: merged weights on the INT grid) and merge come from LoRA unchanged.

`RankAllocator` is PEFT's allocation, step for step (peft.tuners.adalora.RankAllocator): importance of
each entry |p·∇p| smoothed (sensitivity, EMA β1) times its uncertainty (EMA β2 of its deviation),
triplet score = score(λ_i) + mean score of row i of Q + mean score of column i of P; a cubic budget
from Σ init_r down to target_r · modules between steps tinit and total - tfinal, every deltaT steps
the triplets under the budget's threshold get λ_i = 0; at total - tfinal the final allocation is
fixed (and kept zero every later step). `AdaLoraCallback` runs it after every optimizer step, before
the gradients are cleared, so a Trainer run cannot forget it; `orthogonality` is PEFT's regularizer
(w · mean over P and Q of ‖PᵀP - I‖_F, ‖QQᵀ - I‖_F) as a `train.Objective` term.

Where this differs from PEFT: (1) s = alpha / init_r, PEFT's alpha / (init_r + 1e-5); (2) with
tfinal = 0 PEFT never reaches the final allocation (its budget stays just above the target); here the
end of training allocates the target budget once (`finish`), so the exported ranks sum to it.
Export: the kept triplets only, a standard LoRA per module with A = Q[kept], B = P[:, kept]·Λ[kept]
and alpha = s·rank (rank_pattern / alpha_pattern); modules with no triplet left are not written.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError
from .base import AdapterExport, adapter_layers
from .lora import LoraLinear
from .wrap import wrap_linears

STATE_FILE = "adalora_state.safetensors"


class AdaLoraOptions(BaseModel):
    """finetune --adapter adalora: the allocation's settings (PEFT's AdaLoraConfig names and defaults)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    init_r: int = Field(12, ge=1, description="adalora: initial rank of every module")
    target_r: int = Field(8, ge=1, description="adalora: target average rank (budget = target_r x modules)")
    tinit: int = Field(0, ge=0, description="adalora: steps before the budget starts to shrink")
    tfinal: int = Field(0, ge=0, description="adalora: steps trained after the final allocation")
    deltaT: int = Field(1, ge=1, description="adalora: steps between two allocations",
                        json_schema_extra={"flag": ("--delta-t", "--deltaT")})
    beta1: float = Field(0.85, gt=0, lt=1, description="adalora: EMA factor of the sensitivity")
    beta2: float = Field(0.85, gt=0, lt=1, description="adalora: EMA factor of the uncertainty")
    orth_reg_weight: float = Field(0.5, ge=0, description="adalora: weight of the orthogonality regularizer")

    @model_validator(mode="after")
    def _ranks(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r {self.target_r} is above init_r {self.init_r}: the budget only shrinks")
        return self


class AdaLoraLinear(LoraLinear):
    """A LoRA layer in SVD form: update s·P·Λ·Q (module docstring); `kept` marks the triplets the last
    allocation kept (all before the first)."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0, sparse: bool = False,
                 quant_aware: bool = False, qa_weight: torch.Tensor | None = None):
        super().__init__(base_layer, r, alpha, dropout, sparse=sparse, quant_aware=quant_aware, qa_weight=qa_weight)
        a = self.lora_A.weight
        self.lora_E = nn.Parameter(torch.zeros(r, 1, device=a.device, dtype=a.dtype))
        self.register_buffer("kept", torch.ones(r, dtype=torch.bool, device=a.device), persistent=False)

    def reset_parameters(self) -> None:
        # PEFT's AdaLoRA initialisation: P, Q ~ N(0, 0.02²), Λ = 0 (the update starts at zero).
        nn.init.normal_(self.lora_A.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B.weight, mean=0.0, std=0.02)
        if isinstance(getattr(self, "lora_E", None), nn.Parameter):
            nn.init.zeros_(self.lora_E)

    def active_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ·Q, P): the LoRA factors (A, B) of s·P·Λ·Q, differentiable in P, Λ and Q."""
        return self.lora_A.weight * self.lora_E, self.lora_B.weight

    @property
    def rank(self) -> int:
        return int(self.kept.sum())

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Λ_i = 0 for every triplet the last allocation pruned."""
        self.lora_E.masked_fill_(~self.kept.view(-1, 1), 0.0)

    def export(self) -> AdapterExport:
        """The kept triplets as a LoRA: A = Q[kept], B = P[:, kept]·Λ[kept], alpha = s·rank."""
        idx = self.kept.nonzero().flatten()
        a = self.lora_A.weight.detach()[idx]
        b = self.lora_B.weight.detach()[:, idx] * self.lora_E.detach()[idx].view(1, -1)
        return AdapterExport(len(idx), self.scaling * len(idx), self.dropout,
                             {"lora_A.weight": a.contiguous(), "lora_B.weight": b.contiguous()},
                             tuple(v.name for v in self.variants))


def add_adalora(model: nn.Module, targets: list[str], r: int = 12, alpha: float = 32.0, dropout: float = 0.0,
                seed: int | None = None, sparse: bool = False, quant_aware: bool = False,
                qa_weights: dict | None = None) -> dict[str, AdaLoraLinear]:
    """Wrap the named linear modules in AdaLoRA layers of initial rank r (everything else frozen)."""
    return wrap_linears(model, targets, lambda name, base: AdaLoraLinear(
        base, r, alpha, dropout, sparse=sparse, quant_aware=quant_aware, qa_weight=(qa_weights or {}).get(name)),
        "AdaLoRA", seed)


def adalora_layers(model: nn.Module) -> dict[str, AdaLoraLinear]:
    return {n: m for n, m in adapter_layers(model).items() if isinstance(m, AdaLoraLinear)}


def orthogonality(weight: float):
    """PEFT's regularizer as a `train.Objective` term: weight · mean over every P and Q of ‖PᵀP - I‖_F
    and ‖QQᵀ - I‖_F (Q first, as PEFT iterates them)."""

    def regularizer(model, outputs) -> torch.Tensor:
        terms = []
        for layer in adalora_layers(model).values():
            a, b = layer.lora_A.weight, layer.lora_B.weight
            for cov in (a @ a.T, b.T @ b):
                terms.append(torch.norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device), p="fro"))
        return weight * (sum(terms) / len(terms))

    return regularizer


class RankAllocator:
    """PEFT's budget allocation over the AdaLoRA layers of a model (module docstring)."""

    def __init__(self, layers: dict[str, AdaLoraLinear], options: AdaLoraOptions, total_step: int):
        if not layers:
            raise ConfigError("AdaLoRA's rank allocation needs AdaLoRA layers; the model has none")
        self.layers, self.options, self.total_step = layers, options, int(total_step)
        if options.tinit >= self.total_step - options.tfinal:
            raise ConfigError(f"AdaLoRA needs steps to allocate in: tinit {options.tinit} + tfinal {options.tfinal} "
                              f"leave none of the {self.total_step} training steps; lower them or train longer")
        self.init_bgt = sum(layer.r for layer in layers.values())
        self.target_bgt = options.target_r * len(layers)
        self.finalized = False
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """(budget, allocate now?): init budget until tinit, then cubic down to the target at
        total - tfinal, the target after it."""
        o, total = self.options, self.total_step
        if step <= o.tinit:
            return self.init_bgt, False
        if step > total - o.tfinal:
            return self.target_bgt, True
        mul = 1 - (step - o.tinit) / (total - o.tfinal - o.tinit)
        return int((self.init_bgt - self.target_bgt) * (mul ** 3) + self.target_bgt), step % o.deltaT == 0

    def _params(self):
        for name, layer in self.layers.items():
            yield f"{name}.A", layer.lora_A.weight
            yield f"{name}.B", layer.lora_B.weight
            yield f"{name}.E", layer.lora_E

    @torch.no_grad()
    def update_ipt(self) -> None:
        b1, b2 = self.options.beta1, self.options.beta2
        for key, p in self._params():
            if p.grad is None:
                continue
            ipt = (p * p.grad).abs()
            if key not in self.exp_avg_ipt:
                self.exp_avg_ipt[key], self.exp_avg_unc[key] = torch.zeros_like(p), torch.zeros_like(p)
            self.exp_avg_ipt[key] = b1 * self.exp_avg_ipt[key] + (1 - b1) * ipt
            self.exp_avg_unc[key] = b2 * self.exp_avg_unc[key] + (1 - b2) * (ipt - self.exp_avg_ipt[key]).abs()

    def _score(self, key: str, like: torch.Tensor) -> torch.Tensor:
        if key not in self.exp_avg_ipt:
            return torch.zeros_like(like)
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def scores(self) -> dict[str, torch.Tensor]:
        """Each layer's triplet scores (r): score(λ_i) + (mean score of Q's row i + of P's column i)."""
        out = {}
        for name, layer in self.layers.items():
            a = self._score(f"{name}.A", layer.lora_A.weight).mean(dim=1)
            b = self._score(f"{name}.B", layer.lora_B.weight).mean(dim=0)
            out[name] = self._score(f"{name}.E", layer.lora_E).view(-1) + (a + b)
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, int]:
        """Prune the triplets at or below the (init - budget)-th smallest score; returns the ranks."""
        scores = self.scores()
        k = self.init_bgt - budget
        if k > 0:
            threshold = torch.kthvalue(torch.cat(list(scores.values())), k=k)[0].item()
            for name, layer in self.layers.items():
                layer.kept.copy_(scores[name] > threshold)
                layer.apply_mask()
        return self.ranks()

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def update_and_allocate(self, step: int) -> None:
        """After the optimizer step `step` (0-based), before the gradients are cleared (PEFT's
        AdaLoraModel.update_and_allocate)."""
        final = self.total_step - self.options.tfinal
        if step < final:
            self.update_ipt()
            budget, allocate = self.budget_schedule(step)
            if allocate:
                self.mask_to_budget(budget)
        elif step == final:
            self.mask_to_budget(self.budget_schedule(step)[0])
            self.finalized = True
            self.reset_ipt()
        else:
            for layer in self.layers.values():
                layer.apply_mask()

    def finish(self) -> dict[str, int]:
        """End of training: the final allocation if no step reached it (tfinal = 0), masks applied."""
        if not self.finalized:
            self.mask_to_budget(self.target_bgt)
            self.finalized = True
        for layer in self.layers.values():
            layer.apply_mask()
        return self.ranks()

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        state = {f"ipt.{k}": v for k, v in self.exp_avg_ipt.items()}
        state.update({f"unc.{k}": v for k, v in self.exp_avg_unc.items()})
        state.update({f"kept.{n}": layer.kept.to(torch.uint8) for n, layer in self.layers.items()})
        state["finalized"] = torch.tensor(int(self.finalized))
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.reset_ipt()
        for key, value in state.items():
            kind, _, rest = key.partition(".")
            if kind == "ipt":
                self.exp_avg_ipt[rest] = value.clone()
            elif kind == "unc":
                self.exp_avg_unc[rest] = value.clone()
            elif kind == "kept":
                self.layers[rest].kept.copy_(value.bool())
        self.finalized = bool(state.get("finalized", torch.tensor(0)).item())


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class AdaLoraCallback(_callback_base()):
    """Runs the allocation after every optimizer step of a Trainer run (it cannot be forgotten): total
    steps from the Trainer's state; allocation state saved with each checkpoint and restored on resume."""

    def __init__(self, model: nn.Module, options: AdaLoraOptions):
        self.layers, self.options = adalora_layers(model), options
        self.allocator: RankAllocator | None = None
        self._restored: dict | None = None
        self.budget_history: list[tuple[int, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.allocator = RankAllocator(self.layers, self.options, state.max_steps)
        if self._restored is not None:
            self.allocator.load_state(self._restored)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.allocator.update_and_allocate(state.global_step)
        self.budget_history.append((state.global_step, sum(self.allocator.ranks().values())))

    def on_train_end(self, args, state, control, **kwargs):
        self.allocator.finish()

    def save_checkpoint(self, directory) -> None:
        if self.allocator is not None:
            save_file({k: v.contiguous() for k, v in self.allocator.state().items()}, f"{directory}/{STATE_FILE}")

    def load_checkpoint(self, directory) -> None:
        import os

        path = f"{directory}/{STATE_FILE}"
        if os.path.isfile(path):
            self._restored = load_file(path)
            if self.allocator is not None:
                self.allocator.load_state(self._restored)

    def summary(self) -> dict:
        ranks = self.allocator.ranks() if self.allocator is not None else {}
        return {"rank_pattern": ranks, "total_rank": sum(ranks.values()),
                "init_budget": self.allocator.init_bgt if self.allocator else None,
                "target_budget": self.allocator.target_bgt if self.allocator else None}


def rank_summary(ranks: dict[str, int]) -> dict:
    """Mean / min / max of the allocated ranks (for manifests)."""
    values = list(ranks.values()) or [0]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "zero": sum(v == 0 for v in values), "stdev": math.sqrt(sum((v - sum(values) / len(values)) ** 2
                                                                       for v in values) / len(values))}
