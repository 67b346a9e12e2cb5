"""LoRA: a frozen linear layer plus a trainable low-rank update, y = W·x + b + s·B·(A·drop(x)).

Our own layer rather than PEFT's (DESIGN.md §3): later stages need elastic ranks, sparse masks and
quantization-aware merges, which PEFT does not have. Parameter names follow PEFT (`lora_A`,
`lora_B`, `base_layer`) so a saved adapter loads with `peft.PeftModel.from_pretrained`.

The forward and backward are one autograd function (`_LoraFunction`): the scaling is applied to
the small N×r activation instead of the N×out output, the update is added in place with addmm,
the input gradient of both branches is accumulated in place, and with dropout only the dropped
positions (or a boolean mask) are kept for backward instead of the dropped copy of the input; on
CPU the dropped positions are drawn as geometric gaps (~p·n random numbers instead of n). This
keeps LoRA's step time and memory close to the frozen model's (bench/lora_step.py measures it
against PEFT; bench/RESULTS.md has the numbers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


# Up to this dropout rate, on CPU, the dropped elements are drawn as positions (geometric gaps)
# instead of one uniform number per element: ~p·n draws instead of n (see `_sample_drops`).
_POSITIONS_MAX_P = 0.25


def _sample_drops(n: int, p: float) -> torch.Tensor:
    """Flat indices (int64, ascending) of the dropped elements of an n-element tensor.

    Each element is dropped independently with probability p, exactly as with a uniform mask: the
    gaps between consecutive drops of a Bernoulli(p) sequence are i.i.d. Geometric(p), drawn by
    inversion as ceil(log(u) / log(1 - p)) from float64 uniforms u, so ~p·n uniform draws replace n
    (the CPU generator is serial, so this is most of the cost of dropout). Uses torch's default
    generator, so `torch.manual_seed` makes it repeatable.
    """
    k = int(n * p + 6.0 * math.sqrt(n * p * (1.0 - p)) + 16.0)  # too few but once in ~1e9 calls
    log_q = math.log1p(-p)

    def positions(start: float | torch.Tensor = 0.0) -> torch.Tensor:  # 1-based, float64 is exact
        gaps = torch.rand(k, dtype=torch.float64).log_().div_(log_q).ceil_()  # u = 0: inf, harmless
        return gaps.cumsum_(0).add_(start)

    pos = positions()
    while pos[-1].item() <= n:  # the draws ended before the tensor did: continue the sequence
        pos = torch.cat([pos, positions(pos[-1])])
    count = int(torch.searchsorted(pos, float(n), right=True))
    return pos[:count].sub_(1.0).to(torch.int64)


def _zero_dropped(t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Zero the dropped elements of a contiguous N×k tensor in place (drop: bool mask or flat indices)."""
    if drop.dtype == torch.bool:
        return t.masked_fill_(drop, 0.0)
    t.view(-1).index_fill_(0, drop.long(), 0.0)
    return t


class _LoraFunction(torch.autograd.Function):
    """y = x·Wᵀ + b + s·drop(x)·Aᵀ·Bᵀ, with the scaling s/(1-p) applied to the N×r activation.

    Dropout state kept for backward is either the dropped positions (int32/int64, ~0.4·p bytes per
    input element; CPU, p <= _POSITIONS_MAX_P) or a boolean drop mask (1 byte per element,
    `torch.rand_like(x) < p`, as before). Masking uses index_fill/masked_fill, never a multiply
    by a bool tensor (which materialises a float copy of the mask first).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = F.linear(x2, weight, bias)
        drop = None
        c = scaling
        if dropout > 0.0:
            c = scaling / (1.0 - dropout)  # inverted-dropout rescale folded into the N×r activation
            n = x2.numel()
            if x2.device.type == "cpu" and dropout <= _POSITIONS_MAX_P:
                idx = _sample_drops(n, dropout)
                xd = x2.reshape(-1).index_fill(0, idx, 0.0).view(x2.shape)
                drop = idx.to(torch.int32) if n < 2**31 else idx
            else:
                drop = torch.rand_like(x2) < dropout
                xd = x2.masked_fill(drop, 0.0)
        else:
            xd = x2
        h = (xd @ lora_a.t()).mul_(c)  # N×r, already scaled
        del xd
        y.addmm_(h, lora_b.t())
        ctx.save_for_backward(x2 if ctx.needs_input_grad[3] else None, drop, h, weight, lora_a, lora_b)
        ctx.c, ctx.shape = c, shape
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x2, drop, h, weight, lora_a, lora_b = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[4]:
            grad_b = g.t() @ h
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
            return None, None, None, None, grad_b, None, None
        gh = (g @ lora_b).mul_(ctx.c)  # gradient w.r.t. drop(x)·Aᵀ (unscaled)
        if ctx.needs_input_grad[3]:
            xd = x2 if drop is None else _zero_dropped(x2.clone(memory_format=torch.contiguous_format), drop)
            grad_a = gh.t() @ xd
            del xd
        if ctx.needs_input_grad[0]:
            if drop is None:
                grad_x = (g @ weight).addmm_(gh, lora_a)
            else:
                grad_x = _zero_dropped(gh @ lora_a, drop).addmm_(g, weight)
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
