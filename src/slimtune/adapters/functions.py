"""LoRA's fused autograd functions (used by `adapters.lora.LoraLinear`).

`_LoraFunction`: y = x·Wᵀ + b + s·drop(x)·Aᵀ·Bᵀ in one function: the scaling is applied to the small
N×r activation instead of the N×out output, the update is added in place with addmm, the input
gradient of both branches is accumulated in place, and with dropout only the dropped positions (or a
boolean mask) are kept for backward instead of the dropped copy of the input; on CPU the dropped
positions are drawn as geometric gaps (~p·n random numbers instead of n).
`_MergedWeightFunction`: y = x·W_effᵀ + b for layers whose variants act on the weight (sparse mask,
quantization grid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


class _MergedWeightFunction(torch.autograd.Function):
    """y = x·W_effᵀ + b for the sparse (SparsePEFT) and quantization-aware (QA-SparsePEFT) updates.

    W_eff = W + (s·B·A) ⊙ M, and for quantization-aware layers W_eff = Q(W + (s·B·A) ⊙ M) on the
    base's grid. The mask does not factor through the low rank, so the update is applied to the
    weight; backward takes the one weight-sized gradient this needs, G = gᵀ·x, passes it straight
    through Q (STE) and the mask, and projects it onto the rank: dB = s·(G⊙M)·Aᵀ, dA = s·Bᵀ·(G⊙M).
    W_eff is recomputed in backward instead of kept, so memory stays at LoRA's.
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, layer):
        weight = layer.effective_weight(lora_a, lora_b).to(x.dtype)
        bias = layer.base_layer.bias
        y = F.linear(x, weight, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, lora_a, lora_b)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, lora_a, lora_b = ctx.saved_tensors
        layer = ctx.layer
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ layer.effective_weight(lora_a, lora_b).to(g.dtype)).reshape(x.shape)
        gw = g.t() @ x.reshape(-1, x.shape[-1])  # dL/dW_eff, out × in
        for variant in layer.variants:  # the mask zeroes it where the base is pruned; Q passes it through (STE)
            gw = variant.gradient(layer, gw)
        gw = gw.to(lora_a.dtype).mul_(layer.scaling)
        return grad_x, lora_b.t() @ gw, gw @ lora_a.t(), None
