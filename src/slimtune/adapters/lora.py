"""LoRA: a frozen linear layer plus a trainable low-rank update, y = W·x + b + s·B·(A·drop(x)).

Our own layer rather than PEFT's (DESIGN.md §3): later stages need elastic ranks, sparse masks and
quantization-aware merges, which PEFT does not have. Parameter names follow PEFT (`lora_A`,
`lora_B`, `base_layer`) so a saved adapter loads with `peft.PeftModel.from_pretrained`.

The forward and backward are one autograd function (`_LoraFunction`): the scaling is applied to
the small N×r activation instead of the N×out output, the update is added in place with addmm,
the input gradient of both branches is accumulated in place, and with dropout only a boolean
mask is kept for backward instead of the dropped copy of the input. This keeps LoRA's step time
and memory close to the frozen model's (bench/lora_step.py measures it against PEFT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class _LoraFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = F.linear(x2, weight, bias)
        mask = None
        if dropout > 0.0:
            mask = torch.rand_like(x2) >= dropout
            xd = x2 * mask * (1.0 / (1.0 - dropout))
        else:
            xd = x2
        h = (xd @ lora_a.t()).mul_(scaling)  # N×r, already scaled
        y.addmm_(h, lora_b.t())
        ctx.save_for_backward(x2, mask, h, weight, lora_a, lora_b)
        ctx.scaling, ctx.dropout, ctx.shape = scaling, dropout, shape
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x2, mask, h, weight, lora_a, lora_b = ctx.saved_tensors
        s, p = ctx.scaling, ctx.dropout
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_a = grad_b = None
        gh = (g @ lora_b).mul_(s)  # gradient w.r.t. the unscaled h = A·drop(x)
        if ctx.needs_input_grad[4]:
            grad_b = g.t() @ h
        if ctx.needs_input_grad[3]:
            xd = x2 if mask is None else x2 * mask * (1.0 / (1.0 - p))
            grad_a = gh.t() @ xd
        if ctx.needs_input_grad[0]:
            if mask is None:
                grad_x = (g @ weight).addmm_(gh, lora_a)
            else:
                grad_x = (gh @ lora_a).mul_(mask).mul_(1.0 / (1.0 - p))
                grad_x.addmm_(g, weight)
            grad_x = grad_x.reshape(ctx.shape)
        return grad_x, None, None, grad_a, grad_b, None, None


class LoraLinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) with a rank-r update s·B·A, s = alpha / r."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        w = base_layer.weight
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.r, self.lora_alpha, self.dropout = r, float(alpha), float(dropout)
        self.merged = False
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.reset_parameters()

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def reset_parameters(self) -> None:
        # PEFT's default: A Kaiming-uniform, B zero, so the adapter starts as the identity update.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The dense update s·B·A (out × in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        base = self.base_layer
        dropout = self.dropout if self.training else 0.0
        if not torch.is_grad_enabled() and dropout == 0.0:
            y = base(x)
            h = F.linear(x, self.lora_A.weight).mul_(self.scaling)
            return y.add_(F.linear(h, self.lora_B.weight))
        return _LoraFunction.apply(x, base.weight, base.bias, self.lora_A.weight,
                                   self.lora_B.weight, self.scaling, dropout)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.lora_alpha}, dropout={self.dropout}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, targets: list[str], r: int = 16, alpha: float = 32.0,
             dropout: float = 0.0, rank_pattern: dict[str, int] | None = None,
             alpha_pattern: dict[str, float] | None = None, seed: int | None = None) -> dict[str, LoraLinear]:
    """Wrap the named linear modules in LoRA layers, freeze everything else; returns the layers.

    `rank_pattern` / `alpha_pattern` map full module names to per-module rank / alpha.
    """
    if seed is not None:
        torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for name in targets:
        base = model.get_submodule(name)
        if isinstance(base, LoraLinear):
            raise ConfigError(f"module {name} already has a LoRA adapter")
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"module {name} is a {type(base).__name__}, not a linear layer; LoRA targets linear layers")
        layer = LoraLinear(base, (rank_pattern or {}).get(name, r), (alpha_pattern or {}).get(name, alpha), dropout)
        _set_submodule(model, name, layer)
        layers[name] = layer
    return layers


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain linear layers back."""
    for name, layer in lora_layers(model).items():
        base = layer.base_layer
        base.weight += layer.delta_weight().to(base.weight.dtype)
        _set_submodule(model, name, base)
    return model
