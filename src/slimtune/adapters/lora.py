"""LoRA: a frozen linear layer plus a trainable low-rank update, y = W·x + b + s·B·(A·drop(x)).

Our own layer rather than PEFT's (DESIGN.md §3): later stages need elastic ranks, sparse masks and
quantization-aware merges, which PEFT does not have. Parameter names follow PEFT (`lora_A`,
`lora_B`, `base_layer`) so a saved adapter loads with `peft.PeftModel.from_pretrained`.

`LoraLinear` implements the adapter-layer contract (`adapters.base.AdapterLayer`); SparsePEFT and
QA-SparsePEFT are its variants (`base.SparseMask`, `base.QuantAware`). The forward and backward are
fused autograd functions (`adapters.functions`), which keep LoRA's step time and memory close to the
frozen model's (bench/lora_step.py measures it against PEFT; bench/RESULTS.md has the numbers). A
width-sliced layer (elastic widths, `set_axis('out' | 'in', k)`) computes with plain autograd on the
first k rows / columns instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import AdapterExport, AdapterLayer, adapter_layers, merge_adapters, variants
from .functions import _LoraFunction, _MergedWeightFunction, _sample_drops, _zero_dropped  # noqa: F401
from .wrap import wrap_linears


class LoraLinear(AdapterLayer):
    """A frozen linear layer (`base_layer`: nn.Linear or QuantLinear) with a low-rank update s·B·A.

    Options, all off by default (plain LoRA, s = alpha / r):
      rank_space   elastic LoRA (NLS): descending ranks, the first is r (the maximal rank). The active
                   rank r' uses A[:r'] and B[:, :r'] with the maximal rank's scaling, so every
                   sub-adapter is a slice of this one. Set it with `active_rank` (or the 'rank' axis).
      sparse       SparsePEFT (variant `SparseMask`): the update is masked by the base's sparsity,
                   W + (s·B·A) ⊙ M with M = (W != 0), in training and in merge, so zeros stay zeros.
      quant_aware  QA-SparsePEFT (variant `QuantAware`): the base is a QuantLinear and the forward uses
                   the merged weight on its grid, Q(W + (s·B·A) ⊙ M) (straight-through gradient); W is
                   the dequantized base, or `qa_weight` (e.g. the float weights before quantization).
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
        self.variants = variants(*(["sparse"] if sparse else []), *(["quant_aware"] if quant_aware else []))
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

    @property
    def axes(self) -> dict[str, int]:
        return {"rank": self.r, **super().axes}

    def active_axis(self, name: str) -> int:
        return self._active_rank if name == "rank" else super().active_axis(name)

    def set_axis(self, name: str, size: int) -> None:
        if name == "rank":
            self.active_rank = size
        else:
            super().set_axis(name, size)

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
        """The dense update s·B·A at the active rank, after the variants (masked by the base's zeros when sparse)."""
        if lora_a is None:
            lora_a, lora_b = self.active_factors()
        d = (lora_b @ lora_a).mul_(self.scaling)
        for variant in self.variants:
            d = variant.update(self, d)
        return d

    def delta_weight(self) -> torch.Tensor:
        """The update as merging adds it (out × in): W_merged = W + delta_weight()."""
        return self.update()

    def merged_weight(self, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None) -> torch.Tensor:
        """W + update, before any grid (float32 for quantization-aware layers, whose grid is float32)."""
        w = self._frozen_weight()
        dtype = torch.float32 if self.grid is not None else w.dtype
        return w.to(dtype) + self.update(lora_a, lora_b).to(dtype)

    @torch.no_grad()
    def effective_weight(self, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None) -> torch.Tensor:
        """The weight the layer computes with: W + update, on the base's grid if quantization-aware.

        The merge writes exactly this tensor (or its integer codes), so merged == unmerged bitwise.
        """
        w = self.merged_weight(lora_a, lora_b)
        for variant in self.variants:
            w = variant.weight(self, w)
        return w

    @torch.no_grad()
    def merged_codes(self) -> torch.Tensor:
        """Quantization-aware only: the integer codes of the merged weight on the base's grid."""
        return self.grid.quantize(self.merged_weight())

    # ---- the contract: merge and export ---------------------------------------------------
    @torch.no_grad()
    def merge(self) -> nn.Module:
        """The base with the update folded in: a variant's own merge (QA: codes on the same grid, still
        packed), else W + update written into a float base; plain LoRA on a QuantLinear is off the grid,
        so it becomes an nn.Linear holding dequantized W + update."""
        from ..quant.linear import QuantLinear

        for variant in self.variants:
            merged = variant.merge(self)
            if merged is not None:
                return merged
        base = self.base_layer
        if isinstance(base, QuantLinear):
            return base.to_linear(self.effective_weight())
        base.weight.copy_(self.effective_weight())
        return base

    def export(self) -> AdapterExport:
        """A[:r'], B[:, :r'] at the active rank r' with alpha' = alpha·r'/r, so PEFT's scaling alpha'/r'
        equals this layer's alpha/r."""
        a, b = self.active_factors()
        r = self._active_rank
        alpha = self.lora_alpha * r / self.r if r != self.r else self.lora_alpha
        return AdapterExport(r, alpha, self.dropout, {"lora_A.weight": a.detach().contiguous(),
                                                      "lora_B.weight": b.detach().contiguous()},
                             tuple(v.name for v in self.variants))

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        lora_a, lora_b = self.active_factors()
        if self.width_sliced:
            return self._sliced_forward(x, lora_a, lora_b)
        if self.variants:
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

    def _sliced_forward(self, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
        """The first `active_out` outputs from the first `active_in` inputs (x holds only those): the
        function of a physically smaller layer holding W[:o, :i], A[:, :i], B[:o] (plain autograd)."""
        o, i = self.active_axis("out"), self.active_axis("in")
        bias = self.base_layer.bias
        bias = None if bias is None else bias[:o].to(x.dtype)
        if self.variants:  # the variants act on the whole weight (grid groups span the columns): slice after
            w = self.merged_weight(lora_a, lora_b)
            for variant in self.variants:
                w = variant.weight_ste(self, w)
            return F.linear(x, w[:o, :i].to(x.dtype), bias)
        y = F.linear(x, self.base_layer.weight[:o, :i].to(x.dtype), bias)
        xd = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        return y + F.linear(F.linear(xd, lora_a[:, :i]), lora_b[:o]) * self.scaling

    def extra_repr(self) -> str:
        extra = "".join([f", rank_space={self.rank_space}, active={self._active_rank}" if self.rank_space else "",
                         "".join(f", {v.name}" for v in self.variants),
                         f", width=({self.active_axis('out')}, {self.active_axis('in')})" if self.width_sliced else ""])
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
    def make(name: str, base: nn.Module) -> LoraLinear:
        return LoraLinear(base, (rank_pattern or {}).get(name, r), (alpha_pattern or {}).get(name, alpha), dropout,
                          rank_space=rank_space, sparse=sparse, quant_aware=quant_aware,
                          qa_weight=(qa_weights or {}).get(name))

    return wrap_linears(model, targets, make, "LoRA", seed)


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The model's LoRA layers (stages that need any adapter layer use `adapters.base.adapter_layers`)."""
    return {n: m for n, m in adapter_layers(model).items() if isinstance(m, LoraLinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter (at its active rank) into its base and put the base layers back
    (`AdapterLayer.merge` per layer):

    - float base: W += update (masked when sparse), so merged == unmerged and zeros stay zeros;
    - quantization-aware on a QuantLinear: the merged weight's codes on the base's own grid, the
      grid itself unchanged (same scales, zero points and g_idx), still packed;
    - plain LoRA on a QuantLinear: the result is off the grid, so the layer becomes an nn.Linear
      holding dequantized W + update (re-quantize it to get an integer model back).
    """
    return merge_adapters(model)
