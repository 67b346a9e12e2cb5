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
        if layer.pruned is not None:
            gw.masked_fill_(layer.pruned, 0.0)
        gw = gw.to(lora_a.dtype).mul_(layer.scaling)
        return grad_x, lora_b.t() @ gw, gw @ lora_a.t(), None


class LoraLinear(nn.Module):
    """A frozen linear layer (`base_layer`: nn.Linear or QuantLinear) with a low-rank update s·B·A.

    Options, all off by default (plain LoRA, s = alpha / r):
      rank_space   elastic LoRA (NLS): descending ranks, the first is r (the maximal rank). The active
                   rank r' uses A[:r'] and B[:, :r'] with the maximal rank's scaling, so every
                   sub-adapter is a slice of this one. Set it with `active_rank`.
      sparse       SparsePEFT: the update is masked by the base's sparsity, W + (s·B·A) ⊙ M with
                   M = (W != 0), in training and in merge, so the base's zeros stay zeros.
      quant_aware  QA-SparsePEFT: the base is a QuantLinear and the forward uses the merged weight
                   on its grid, Q(W + (s·B·A) ⊙ M) (straight-through gradient); W is the dequantized
                   base, or `qa_weight` (e.g. the float weights before quantization, as in SQFT).
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 rank_space: list[int] | None = None, sparse: bool = False, quant_aware: bool = False,
                 qa_weight: torch.Tensor | None = None):
        super().__init__()
        if r < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        if (sparse or quant_aware) and dropout > 0:
            raise ConfigError("sparse and quantization-aware adapters apply their update to the weight, which "
                              f"leaves no adapter input to drop out; use dropout 0 (got {dropout})")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        w = base_layer.weight
        dtype = w.dtype if w.is_floating_point() else torch.float32
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=dtype)
        self.r, self.lora_alpha, self.dropout = r, float(alpha), float(dropout)
        self.rank_space = check_rank_space(rank_space, r) if rank_space is not None else None
        self._active_rank = r
        self.merged = False
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.grid = None
        if quant_aware:
            params = getattr(base_layer, "params", None)
            if params is None:
                raise ConfigError(f"a quantization-aware adapter needs a quantized base layer, got a "
                                  f"{type(base_layer).__name__}; quantize the base first (slimtune quantize)")
            self.grid = params
        if qa_weight is not None:
            if not quant_aware:
                raise ConfigError("qa_weight is only used by quantization-aware adapters")
            if tuple(qa_weight.shape) != (self.out_features, self.in_features):
                raise ConfigError(f"qa_weight has shape {tuple(qa_weight.shape)}, the layer's weight is "
                                  f"{(self.out_features, self.in_features)}")
            self.register_buffer("qa_weight", qa_weight.detach().to(torch.float32).clone(), persistent=False)
        else:
            self.qa_weight = None
        # The positions the update may not touch (sparse only), kept as a bool buffer: 1 byte/weight.
        self.register_buffer("pruned", (self._frozen_weight() == 0) if sparse else None, persistent=False)
        self.reset_parameters()

    # ---- configuration --------------------------------------------------------------------
    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    @property
    def sparse(self) -> bool:
        return self.pruned is not None

    @property
    def quant_aware(self) -> bool:
        return self.grid is not None

    @property
    def active_rank(self) -> int:
        return self._active_rank

    @active_rank.setter
    def active_rank(self, rank: int) -> None:
        allowed = self.rank_space or [self.r]
        if rank not in allowed:
            raise ConfigError(f"rank {rank} is not in this adapter's rank space {allowed}")
        self._active_rank = int(rank)

    def reset_parameters(self) -> None:
        # PEFT's default: A Kaiming-uniform, B zero, so the adapter starts as the identity update.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # ---- weights ------------------------------------------------------------------------
    def active_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[:r'], B[:, :r']) of the active rank r' (views of the parameters)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        r = self._active_rank
        return (a, b) if r == self.r else (a[:r], b[:, :r])

    def _frozen_weight(self) -> torch.Tensor:
        """W: the base weight (dequantized for a QuantLinear), or qa_weight when given."""
        return self.qa_weight if self.qa_weight is not None else self.base_layer.weight

    def update(self, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None) -> torch.Tensor:
        """The dense update s·B·A at the active rank, masked by the base's sparsity when sparse."""
        if lora_a is None:
            lora_a, lora_b = self.active_factors()
        d = (lora_b @ lora_a).mul_(self.scaling)
        return d.masked_fill_(self.pruned, 0.0) if self.pruned is not None else d

    def delta_weight(self) -> torch.Tensor:
        """The update as merging adds it (out × in): W_merged = W + delta_weight()."""
        return self.update()

    def _merged(self, lora_a: torch.Tensor | None, lora_b: torch.Tensor | None) -> torch.Tensor:
        """W + update, before any grid (float32 for quantization-aware layers, whose grid is float32)."""
        w = self._frozen_weight()
        dtype = torch.float32 if self.grid is not None else w.dtype
        return w.to(dtype) + self.update(lora_a, lora_b).to(dtype)

    @torch.no_grad()
    def effective_weight(self, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None) -> torch.Tensor:
        """The weight the layer computes with: W + update, on the base's grid if quantization-aware.

        The merge writes exactly this tensor (or its integer codes), so merged == unmerged bitwise.
        """
        merged = self._merged(lora_a, lora_b)
        return self.grid.fake_quantize(merged) if self.grid is not None else merged

    @torch.no_grad()
    def merged_codes(self) -> torch.Tensor:
        """Quantization-aware only: the integer codes of the merged weight on the base's grid."""
        return self.grid.quantize(self._merged(None, None))

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        lora_a, lora_b = self.active_factors()
        if self.pruned is not None or self.grid is not None:
            if not torch.is_grad_enabled():
                bias = self.base_layer.bias
                return F.linear(x, self.effective_weight(lora_a, lora_b).to(x.dtype),
                                None if bias is None else bias.to(x.dtype))
            return _MergedWeightFunction.apply(x, lora_a, lora_b, self)
        base = self.base_layer
        dropout = self.dropout if self.training else 0.0
        if not torch.is_grad_enabled() and dropout == 0.0:
            y = base(x)
            h = F.linear(x, lora_a).mul_(self.scaling)
            return y.add_(F.linear(h, lora_b))
        return _LoraFunction.apply(x, base.weight, base.bias, lora_a, lora_b, self.scaling, dropout)

    def extra_repr(self) -> str:
        extra = "".join([f", rank_space={self.rank_space}, active={self._active_rank}" if self.rank_space else "",
                         ", sparse" if self.sparse else "", ", quant_aware" if self.quant_aware else ""])
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.lora_alpha}, "
                f"dropout={self.dropout}{extra}")


def check_rank_space(space, r_max: int | None = None) -> list[int]:
    """A rank space is a strictly descending list of positive ranks; its first is the maximal rank."""
    space = list(space)
    if not space or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in space):
        raise ConfigError(f"a rank space is a non-empty list of positive integers, got {space}")
    if any(a <= b for a, b in zip(space, space[1:])):
        raise ConfigError(f"rank space {space} must be strictly descending (e.g. 32,24,16): its first rank is the maximal one")
    if r_max is not None and space[0] != r_max:
        raise ConfigError(f"rank space {space} must start at the maximal rank {r_max}"
                          + (" (it has a rank above it)" if space[0] > r_max else ""))
    return space


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, targets: list[str], r: int = 16, alpha: float = 32.0,
             dropout: float = 0.0, rank_pattern: dict[str, int] | None = None,
             alpha_pattern: dict[str, float] | None = None, seed: int | None = None,
             rank_space: list[int] | None = None, sparse: bool = False, quant_aware: bool = False,
             qa_weights: dict[str, torch.Tensor] | None = None) -> dict[str, LoraLinear]:
    """Wrap the named linear modules (nn.Linear or QuantLinear) in LoRA layers, freeze everything
    else; returns the layers.

    `rank_pattern` / `alpha_pattern` map full module names to per-module rank / alpha; `rank_space`
    makes every layer elastic over it (its first rank is r); `qa_weights` maps names to the float
    weights a quantization-aware layer merges into (default: its dequantized base).
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
        if not _is_linear(base):
            raise ConfigError(f"module {name} is a {type(base).__name__}, not a linear layer; LoRA targets linear layers")
        layer = LoraLinear(base, (rank_pattern or {}).get(name, r), (alpha_pattern or {}).get(name, alpha), dropout,
                           rank_space=rank_space, sparse=sparse, quant_aware=quant_aware,
                           qa_weight=(qa_weights or {}).get(name))
        layer.train(base.training)  # an adapter added to a model in eval mode must not apply dropout
        _set_submodule(model, name, layer)
        layers[name] = layer
    return layers


def _is_linear(module: nn.Module) -> bool:
    from ..quant.linear import QuantLinear

    return isinstance(module, (nn.Linear, QuantLinear))


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter (at its active rank) into its base and put the base layers back.

    - float base: W += update (masked when sparse), so merged == unmerged and zeros stay zeros;
    - quantization-aware on a QuantLinear: the merged weight's codes on the base's own grid, the
      grid itself unchanged (same scales, zero points and g_idx), still packed;
    - plain LoRA on a QuantLinear: the result is off the grid, so the layer becomes an nn.Linear
      holding dequantized W + update (re-quantize it to get an integer model back).
    """
    from ..quant.linear import QuantLinear

    for name, layer in lora_layers(model).items():
        base = layer.base_layer
        if layer.quant_aware:
            codes = layer.merged_codes()
            base.set_quantized(base.params, codes)
        elif isinstance(base, QuantLinear):
            base = base.to_linear(layer.effective_weight())
        else:
            base.weight.copy_(layer.effective_weight())
        _set_submodule(model, name, base)
    return model
