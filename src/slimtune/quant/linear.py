"""QuantLinear: a linear layer that stores its weight as packed integer codes plus a per-group grid.

Storage (buffers):
  qweight  int32 [out, ceil(in * bits / 32)]  codes packed densely along the input dimension
           (packing.py; 4 bits: 8 codes per word, 3 bits: 32 codes per 3 words, 8 bits: 4 per word)
  scales   float32 [out, n_groups]           float32 so that the grid is exact and matches QuantParams
  zeros    uint8   [out, n_groups]           integer zero points
  g_idx    int32   [in]                      only for grids with a non-contiguous group order
So a 4-bit weight with group 64 takes 0.5 + 5/64 bytes per weight (~0.58).

Forward = F.linear(x, dequantized weight, bias), bitwise equal to nn.Linear holding
dequantized_weight(). The dequantized weight is cached (base weights are frozen); the cache
is keyed by the buffers' storage and in-place version counters, so load_state_dict, in-place
edits and .to(device) all invalidate it. Keep scales float32: casting a QuantLinear to another
float dtype would move its grid (the forward casts the dequantized weight to the input's dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .packing import pack, packed_width, unpack
from .params import DEFAULT_BITS, DEFAULT_GROUP_SIZE, QuantParams, check_bits


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: int = DEFAULT_BITS, group_size: int = DEFAULT_GROUP_SIZE,
                 symmetric: bool = True, bias: bool = False, has_g_idx: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = check_bits(bits), group_size, symmetric
        n_groups = 1 if group_size == -1 else in_features // group_size
        kw = {"device": device}
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, bits), dtype=torch.int32, **kw))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float32, **kw))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8, **kw))
        if has_g_idx:
            self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32, **kw))
        else:
            self.g_idx = None
        self.bias = nn.Parameter(torch.zeros(out_features, **kw), requires_grad=False) if bias else None
        self._cache: tuple | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_codes(cls, params: QuantParams, codes: torch.Tensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        out, cols = codes.shape
        if params.out_features != out:
            raise ValueError(f"grid has {params.out_features} rows, codes have {out}")
        m = cls(cols, out, params.bits, params.group_size, params.symmetric, bias is not None,
                params.g_idx is not None, device=codes.device)
        m.set_quantized(params, codes)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def set_quantized(self, params: QuantParams, codes: torch.Tensor) -> None:
        """Store new codes and grid (same shapes)."""
        if int(codes.max()) > params.maxq or int(codes.min()) < 0:
            raise ValueError(f"codes outside [0, {params.maxq}]")
        self.qweight.copy_(pack(codes, self.bits))
        self.scales.copy_(params.scales)
        self.zeros.copy_(params.zeros.to(torch.uint8))
        if self.g_idx is not None:
            self.g_idx.copy_(params.g_idx)

    # ---- views --------------------------------------------------------------------------
    @property
    def params(self) -> QuantParams:
        return QuantParams(self.bits, self.group_size, self.symmetric, self.scales.clone(),
                           self.zeros.to(torch.int32), None if self.g_idx is None else self.g_idx.clone())

    def codes(self) -> torch.Tensor:
        """uint8 [out, in] integer codes."""
        return unpack(self.qweight, self.bits, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [out, in]: scales * (codes - zeros), a fresh tensor."""
        return self.params.dequantize(self.codes())

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (read-only, cached), for code that inspects .weight."""
        return self._cached_weight(torch.float32)

    @torch.no_grad()
    def to_linear(self, weight: torch.Tensor | None = None) -> nn.Linear:
        """A frozen nn.Linear holding `weight` (default: the dequantized weight) and this layer's bias."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.qweight.device)
        dense.weight.copy_(self.dequantized_weight() if weight is None else weight)
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense.requires_grad_(False)

    def storage_bytes(self) -> int:
        """Bytes of the packed export: codes, float32 scales, int8 zero points (asymmetric only), g_idx."""
        tensors = [self.qweight, self.scales] + ([] if self.symmetric else [self.zeros]) \
            + ([self.g_idx] if self.g_idx is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- forward --------------------------------------------------------------------------
    def _key(self, dtype) -> tuple:
        bufs = [self.qweight, self.scales, self.zeros] + ([self.g_idx] if self.g_idx is not None else [])
        return (dtype,) + tuple((t.data_ptr(), t._version, t.device) for t in bufs)

    def _cached_weight(self, dtype: torch.dtype) -> torch.Tensor:
        key = self._key(dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.dequantized_weight().to(dtype))
        return self._cache[1]

    def clear_cache(self) -> None:
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self._cached_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, bias={self.bias is not None}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model_linears(model: nn.Module, results: dict[str, tuple[QuantParams, torch.Tensor]]) -> None:
    """Replace each named nn.Linear with a QuantLinear holding (params, codes); bias is kept."""
    for name, (params, codes) in results.items():
        old = model.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{name} is a {type(old).__name__}, not an nn.Linear")
        if tuple(codes.shape) != (old.out_features, old.in_features):
            raise ValueError(f"{name}: codes {tuple(codes.shape)} do not match the layer's weight "
                             f"{(old.out_features, old.in_features)}")
        new = QuantLinear.from_codes(params, codes.to(old.weight.device),
                                     None if old.bias is None else old.bias.detach().float())
        new.train(old.training)
        _set_module(model, name, new)


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def dequantize_all(net) -> None:
    """Replace every QuantLinear by an nn.Linear holding its dequantized weight."""
    for name, q in quant_linears(net).items():
        _set_module(net, name, q.to_linear())
    if hasattr(getattr(net, "config", None), "quantization_config"):
        del net.config.quantization_config
