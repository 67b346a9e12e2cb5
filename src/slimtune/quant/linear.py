"""QuantLinear: a linear layer that stores its weight as packed integer codes plus a per-group grid.

Storage (buffers):
  qweight  int32 [out, ceil(in * bits / 32)]  codes packed densely along the input dimension
           (packing.py; 4 bits: 8 codes per word, 3 bits: 32 codes per 3 words, 8 bits: 4 per word)
  scales   float32 [out, n_groups]           float32 so that the grid is exact and matches QuantParams
  zeros    uint8   [out, n_groups]           integer zero points
  g_idx    int32   [in]                      only for grids with a non-contiguous group order
So a 4-bit weight with group 64 takes 0.5 + 5/64 bytes per weight (~0.58).

Two inference paths (`inference`, set per model with `set_inference`):
  "kernel"      (4-bit grids the kernel takes, on CPU, when no gradient is needed) torch's packed
                int4 matmul (deploy/int4.py): the codes are repacked once into the kernel's layout
                (0.5 bytes per weight plus bf16 scales) and `qweight` is dropped (no second packed
                copy, no float copy); reading `qweight`, `codes()` or the state dict re-derives the
                codes exactly from the kernel's copy (int4.unpack_codes), and the next kernel forward
                drops them again. It computes in bfloat16: within a tolerance of the exact path only.
  "dequantize"  F.linear(x, dequantized weight, bias), bitwise equal to nn.Linear holding
                dequantized_weight(); the float32 weight is built once and cached.
"kernel" falls back to "dequantize" per layer where the kernel cannot run (`inference_path()` says
why; `inference_summary(model)` counts the layers per path). Both caches are keyed by the buffers'
storage and in-place version counters, so load_state_dict, in-place edits and .to(device)
invalidate them. `.weight` (for code that inspects it, e.g. LoRA training) always builds the
float cache. Keep scales float32: casting a QuantLinear to another float dtype would move its grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import int4
from ..errors import ConfigError
from .packing import pack, packed_width, unpack
from .params import DEFAULT_BITS, DEFAULT_GROUP_SIZE, QuantParams, check_bits

INFERENCE_PATHS = ("kernel", "dequantize")


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
        self._kernel: tuple | None = None  # (key, int4.Int4Weight or None, reason)
        self.inference = "dequantize"

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
        if self._codes_dropped():  # kernel mode: the new codes replace the kernel's copy
            self._buffers["qweight"] = pack(codes, self.bits).to(self.scales.device)
        else:
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
        """uint8 [out, in] integer codes (in kernel mode read back from the kernel's packed copy)."""
        if self._codes_dropped():
            return int4.unpack_codes(self._kernel[1])
        return unpack(self.qweight, self.bits, self.in_features)

    def packed_codes(self) -> torch.Tensor:
        """`qweight`'s value; in kernel mode re-derived without putting it back in memory."""
        return pack(self.codes(), self.bits) if self._codes_dropped() else self.qweight

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
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.scales.device)
        dense.weight.copy_(self.dequantized_weight() if weight is None else weight)
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense.requires_grad_(False)

    def storage_bytes(self) -> int:
        """Bytes of the packed export: codes, float32 scales, int8 zero points (asymmetric only), g_idx."""
        tensors = [self.scales] + ([] if self.symmetric else [self.zeros]) \
            + ([self.g_idx] if self.g_idx is not None else [])
        codes = self.out_features * packed_width(self.in_features, self.bits) * 4
        return codes + sum(t.numel() * t.element_size() for t in tensors)

    # ---- forward --------------------------------------------------------------------------
    def _key(self, dtype) -> tuple:
        bufs = [self._buffers.get("qweight"), self.scales, self.zeros] + ([self.g_idx] if self.g_idx is not None else [])
        return (dtype,) + tuple(("dropped",) if t is None else (t.data_ptr(), t._version, t.device) for t in bufs)

    def _cached_weight(self, dtype: torch.dtype) -> torch.Tensor:
        key = self._key(dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.dequantized_weight().to(dtype))
        return self._cache[1]

    def clear_cache(self) -> None:
        self._restore_codes()
        self._cache = None
        self._kernel = None

    # ---- kernel mode: the codes live in the kernel's packed copy only --------------------
    def _codes_dropped(self) -> bool:
        return self._buffers.get("qweight") is None

    def _restore_codes(self) -> None:
        """Put `qweight` back, re-derived exactly from the kernel's copy (no-op when it is there)."""
        if not self._codes_dropped():
            return
        stale = self._kernel[0] != self._key(None)
        self._buffers["qweight"] = pack(int4.unpack_codes(self._kernel[1]), self.bits).to(self.scales.device)
        if not stale:
            self._kernel = (self._key(None),) + self._kernel[1:]

    def __getattr__(self, name: str):
        if name == "qweight" and self.__dict__.get("_kernel") is not None and self._codes_dropped():
            self._restore_codes()
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._codes_dropped():
            destination[prefix + "qweight"] = pack(self.codes(), self.bits)

    def _load_from_state_dict(self, *args, **kwargs):
        self._restore_codes()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._restore_codes()
        self._kernel = None
        return super()._apply(fn, *args, **kwargs)

    def _kernel_weight(self) -> tuple:
        """(int4.Int4Weight or None, reason it is None), built once per buffer state; once built,
        `qweight` is dropped (the kernel's copy holds the codes)."""
        key = self._key(None)
        if self._kernel is None or self._kernel[0] != key:
            self._restore_codes()  # the grid was edited in place: repack from the codes
            key = self._key(None)
            plain = self.g_idx is None or bool(torch.equal(
                self.g_idx.long(), torch.arange(self.in_features, device=self.g_idx.device) // self.group_size))
            reason = int4.unsupported(self.bits, self.group_size, self.in_features, self.out_features, plain,
                                      self.scales.device)
            weight = None if reason else int4.pack_weight(self.codes(), self.scales, self.zeros, self.group_size)
            self._kernel = (key, weight, reason)
            if weight is not None:
                self._cache = None  # no float copy next to the packed one
        weight, reason = self._kernel[1], self._kernel[2]
        if weight is not None and not self._codes_dropped():
            self._buffers["qweight"] = None
            self._kernel = (self._key(None), weight, reason)
        return weight, reason

    def inference_path(self) -> tuple[str, str | None]:
        """("kernel", None) or ("dequantize", why not the kernel) for an inference forward."""
        if self.inference == "dequantize":
            return "dequantize", "inference='dequantize'"
        weight, reason = self._kernel_weight()
        return ("kernel", None) if weight is not None else ("dequantize", reason)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # under torch.compile the buffer-state keys cannot be traced: deploy.decode runs one eager forward
        # (which builds the kernel weights and dequantized caches) before compiling, and the compiled step
        # treats the model as frozen
        frozen = torch.compiler.is_compiling()
        if self.inference == "kernel" and not (torch.is_grad_enabled() and x.requires_grad):
            weight = self._kernel[1] if frozen and self._kernel else self._kernel_weight()[0]
            if weight is not None:
                return int4.matmul(x, weight, bias)
        return F.linear(x, self._cache[1] if frozen and self._cache else self._cached_weight(x.dtype), bias)

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


def set_inference(model: nn.Module, path: str) -> dict[str, int]:
    """Choose every QuantLinear's inference path ("kernel" or "dequantize"); returns
    inference_summary(model) (kernel layers are packed for the kernel here, not at the first forward)."""
    if path not in INFERENCE_PATHS:
        raise ConfigError(f"unknown inference path {path!r}; choose from {', '.join(INFERENCE_PATHS)}")
    for m in quant_linears(model).values():
        m.inference = path
        if path == "dequantize":
            m._restore_codes()
            m._kernel = None
    return inference_summary(model)


def inference_summary(model: nn.Module) -> dict[str, int]:
    """{"kernel": n, "dequantize (<reason>)": n, ...} over the model's QuantLinear modules."""
    counts: dict[str, int] = {}
    for m in quant_linears(model).values():
        path, reason = m.inference_path()
        label = path if reason is None else f"{path} ({reason})"
        counts[label] = counts.get(label, 0) + 1
    return counts


def dequantize_all(net) -> None:
    """Replace every QuantLinear by an nn.Linear holding its dequantized weight."""
    for name, q in quant_linears(net).items():
        _set_module(net, name, q.to_linear())
    if hasattr(getattr(net, "config", None), "quantization_config"):
        del net.config.quantization_config
