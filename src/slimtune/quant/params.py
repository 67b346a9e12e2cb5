"""QuantParams: the integer grid of one quantized weight matrix (bits, groups, scales, zero points).

Convention (the same as GPTQ's reference quantizer and SQFT's QA-SparsePEFT):
    q = clamp(round(w / s + z), 0, 2^b - 1)        (unsigned integers)
    w_hat = s * (q - z)
Scales s are float32 [out, n_groups]; zero points z are INTEGERS [out, n_groups], so w = 0 maps
to q = z and back to exactly 0: pruned weights stay exact zeros through quantization.
Symmetric quantization fixes z = 2^(b-1) (8 for 4 bits) and takes s from max|w|.

Groups are runs of `group_size` consecutive input columns (group_size = -1: one group per
output row, "per-channel"). A group size must divide every quantized layer's input width:
slimtune REJECTS non-dividing group sizes instead of supporting a shorter last group, because
the packed export formats (compressed-tensors, GPTQ) and the loaders that read them assume
equal groups. `g_idx` (the group of each input column) is optional: slimtune's own GPTQ with
act-order uses static groups, whose g_idx is the plain j // group_size, so it stores none;
the field exists for grids that do need one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import ConfigError

SUPPORTED_BITS = (2, 3, 4, 8)
DEFAULT_BITS = 4
DEFAULT_GROUP_SIZE = 64  # the quantize stage's default (configs.QuantizeConfig)
MAX_LISTED_GROUP = 256  # group sizes listed in error messages


def check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits!r} is not supported; choose from {', '.join(map(str, SUPPORTED_BITS))}")
    return int(bits)


def dividing_group_sizes(widths, limit: int = MAX_LISTED_GROUP) -> list[int]:
    """Group sizes (>= 2, <= limit) that divide every width; -1 (per-channel) always works too."""
    widths = list(widths)
    return [g for g in range(2, limit + 1) if all(w % g == 0 for w in widths)]


def check_group_size(group_size, layers: dict[str, int]) -> int:
    """Validate group_size against {layer name: input width}; the error lists sizes that fit."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or (group_size < 1 and group_size != -1):
        raise ConfigError(f"group_size must be a positive integer or -1 (one group per output row), got {group_size!r}")
    if group_size == -1:
        return -1
    for name, width in layers.items():
        if width % group_size:
            fits = dividing_group_sizes(layers.values())
            listed = ", ".join(map(str, fits)) if fits else "none"
            raise ConfigError(
                f"group size {group_size} does not divide {name}'s {width} inputs; group sizes that divide "
                f"every quantized layer: {listed} (or -1 for one group per output row)")
    return group_size


def _group_index(in_features: int, group_size: int, g_idx: torch.Tensor | None, device) -> torch.Tensor:
    if g_idx is not None:
        return g_idx.to(device=device, dtype=torch.long)
    if group_size == -1:
        return torch.zeros(in_features, dtype=torch.long, device=device)
    return torch.arange(in_features, device=device) // group_size


@dataclass(eq=False)
class QuantParams:
    """Grid of one [out, in] weight. scales float32 [out, G]; zeros int32 [out, G]; g_idx int32 [in] or None."""

    bits: int
    group_size: int
    symmetric: bool
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor | None = None

    def __post_init__(self):
        check_bits(self.bits)
        self.scales = self.scales.detach().to(torch.float32).contiguous()
        if self.zeros.is_floating_point() and not torch.equal(self.zeros, self.zeros.round()):
            raise ValueError("zero points must be integers")
        self.zeros = self.zeros.detach().to(torch.int32).contiguous()
        if self.scales.shape != self.zeros.shape or self.scales.dim() != 2:
            raise ValueError(f"scales {tuple(self.scales.shape)} and zeros {tuple(self.zeros.shape)} "
                             "must both be [out, n_groups]")
        if self.g_idx is not None:
            self.g_idx = self.g_idx.detach().to(torch.int32).contiguous()

    # ---- shape --------------------------------------------------------------------------
    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    @property
    def out_features(self) -> int:
        return self.scales.shape[0]

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def in_features(self) -> int:
        if self.g_idx is not None:
            return self.g_idx.numel()
        if self.group_size == -1:
            raise ValueError("a per-channel grid does not know its input width")
        return self.n_groups * self.group_size

    def _grid(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w viewed per group, scales, zeros) broadcastable against each other.

        Contiguous groups reshape w to [out, G, group] and broadcast the [out, G, 1] grid, so no
        [out, in] copy of the scales is made (quantization-aware training does this every step);
        a g_idx grid gathers per-column scales. Both give bitwise the same values.
        """
        out, cols = w.shape
        if self.g_idx is None and self.group_size != -1:
            g = cols // self.group_size
            return (w.reshape(out, g, self.group_size), self.scales.to(w.device)[:, :, None],
                    self.zeros.to(w.device)[:, :, None].to(torch.float32))
        idx = _group_index(cols, self.group_size, self.g_idx, w.device)
        return (w, self.scales.to(w.device).index_select(1, idx),
                self.zeros.to(w.device).index_select(1, idx).to(torch.float32))

    # ---- the grid -----------------------------------------------------------------------
    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes uint8 [out, in]: clamp(round(w/s + z), 0, 2^b - 1)."""
        wg, s, z = self._grid(w.to(torch.float32))
        return quantize_with(wg, s, z, self.maxq).to(torch.uint8).reshape(w.shape)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """float32 [out, in]: s * (q - z)."""
        qg, s, z = self._grid(q)
        return dequantize_with(qg, s, z).reshape(q.shape)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """dequantize(quantize(w)) without the uint8 round trip; bitwise the same values."""
        wg, s, z = self._grid(w.to(torch.float32))
        return dequantize_with(quantize_with(wg, s, z, self.maxq), s, z).reshape(w.shape)

    # ---- serialization ------------------------------------------------------------------
    def meta(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready); the scalars travel as 0-d int tensors."""
        out = {"bits": torch.tensor(self.bits, dtype=torch.int32),
               "group_size": torch.tensor(self.group_size, dtype=torch.int32),
               "symmetric": torch.tensor(int(self.symmetric), dtype=torch.int32),
               "scales": self.scales, "zeros": self.zeros}
        if self.g_idx is not None:
            out["g_idx"] = self.g_idx
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "QuantParams":
        return cls(int(state["bits"]), int(state["group_size"]), bool(int(state["symmetric"])),
                   state["scales"], state["zeros"], state.get("g_idx"))

    def to_bytes(self) -> bytes:
        """Deterministic serialization: equal grids give identical bytes."""
        from safetensors.torch import save

        return save({k: v.contiguous().cpu() for k, v in self.state_dict().items()},
                    metadata={"slimtune.quant": json.dumps(self.meta(), sort_keys=True)})

    def __eq__(self, other) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        same_gidx = (self.g_idx is None and other.g_idx is None) or (
            self.g_idx is not None and other.g_idx is not None and torch.equal(self.g_idx, other.g_idx))
        return (self.meta() == other.meta() and same_gidx
                and self.scales.dtype == other.scales.dtype and torch.equal(self.scales, other.scales)
                and self.zeros.dtype == other.zeros.dtype and torch.equal(self.zeros, other.zeros))

    __hash__ = None

    def __repr__(self) -> str:
        return (f"QuantParams(bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}, "
                f"shape=[{self.out_features}, {self.n_groups}]{', g_idx' if self.g_idx is not None else ''})")


def quantize_with(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, maxq: int) -> torch.Tensor:
    """Float codes (integral values) for float32 w with broadcastable float32 s, z."""
    return torch.round(w / s + z).clamp_(0, maxq)


def dequantize_with(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """s * (q - z) in float32. Every dequantization in slimtune goes through here, so all agree bitwise."""
    return (q.to(torch.float32) - z.to(torch.float32)) * s


def minmax_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) float32 per row of w [rows, cols], min-max as GPTQ's reference quantizer.

    The range always contains 0 (so 0 is on the grid); an all-zero row gets the range [-1, 1].
    Symmetric: z = 2^(b-1), s = max|w| / ((2^b - 1) / 2)  (compressed-tensors' convention too).
    Asymmetric: s = (max - min) / (2^b - 1), z = round(-min / s) clamped to the grid.
    """
    maxq = (1 << bits) - 1
    w = w.to(torch.float32)
    xmin = w.amin(dim=1).clamp(max=0)
    xmax = w.amax(dim=1).clamp(min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmax = torch.where(xmax == 0, torch.ones_like(xmax), xmax)
        scale = xmax / (maxq / 2)
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        empty = (xmin == 0) & (xmax == 0)
        xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
        xmax = torch.where(empty, torch.ones_like(xmax), xmax)
        scale = (xmax - xmin) / maxq
        zero = torch.round(-xmin / scale).clamp_(0, maxq)
    return scale, zero


# How a group's scale is chosen. minmax: the range of its weights (GPTQ's paper, RTN). mse: the
# min-max scale shrunk by the factor p whose rounding error sum (w_hat - w)^2 is smallest (the
# GPTQ reference code's `mse` option, llm-compressor's mse observer). imatrix: the same search
# with each column's error weighted by its mean squared input E[x_j^2] (from diag H), i.e. the
# diagonal part of GPTQ's own objective (llama.cpp's importance matrix, llm-compressor's
# imatrix_mse observer); it needs calibration statistics, so only GPTQ offers it.
OBSERVERS = ("minmax", "mse", "imatrix")
# Shrink factors tried: a coarse pass over [0.55, 1], then steps of 0.01 around each group's best
# (on the default model 90% of the groups' best shrink factors lie above 0.78).
COARSE_SHRINK = [1.0 - 0.05 * i for i in range(10)]
FINE_SHRINK = [d / 100 for d in (-4, -3, -2, -1, 1, 2, 3, 4)]


def check_observer(observer) -> str:
    if observer not in OBSERVERS:
        raise ConfigError(f"unknown observer {observer!r}; choose from {', '.join(OBSERVERS)}")
    return observer


def fit_params(w: torch.Tensor, bits: int, symmetric: bool, observer: str = "minmax",
               importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) float32 per group of w [..., group] (leading dimensions: the groups).

    Shrinking the min-max range by p scales s by p and leaves the integer zero point as it is
    (z = round(-min / s) does not depend on p), so the search only tries s = p * s_minmax, for
    p on a coarse grid and then finely around each group's best (18 candidates in all). Zero
    stays on the grid at every p, so pruned weights stay exact zeros. importance: weights of the
    squared error, broadcastable against w (observer "imatrix"); ties keep the earlier candidate.
    """
    lead, size = w.shape[:-1], w.shape[-1]
    scale, zero = minmax_params(w.reshape(-1, size), bits, symmetric)
    scale, zero = scale.view(lead), zero.view(lead)
    if observer == "minmax":
        return scale, zero
    maxq = (1 << bits) - 1
    # In units of the min-max step: a group's error at shrink p is s^2 * sum imp * ((q - z) p - w/s)^2,
    # and s^2 is the same for all of a group's candidates, so it is left out of the comparison.
    ws = w.to(torch.float32) / scale[..., None]
    zc = zero[..., None]

    def error(p: torch.Tensor) -> torch.Tensor:
        e = torch.div(ws, p).add_(zc).round_().clamp_(0, maxq).sub_(zc).mul_(p).sub_(ws).square_()
        return (e if importance is None else e.mul_(importance)).sum(-1)

    best_p = best = None
    for candidates in (COARSE_SHRINK, FINE_SHRINK):
        centre = best_p
        for c in candidates:
            p = torch.full_like(scale, c) if centre is None else (centre + c)
            err = error(p[..., None])
            if best is None:
                best_p, best = p, err
            else:
                better = err < best
                best, best_p = torch.where(better, err, best), torch.where(better, p, best_p)
    return scale * best_p, zero


def compute_params(weight: torch.Tensor, bits: int = DEFAULT_BITS, group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = True,
                   observer: str = "minmax", importance: torch.Tensor | None = None) -> QuantParams:
    """QuantParams for weight [out, in] with contiguous groups of group_size (-1: per row).

    observer: "minmax", "mse" or "imatrix" (see OBSERVERS); importance [in] (imatrix only)."""
    bits = check_bits(bits)
    check_observer(observer)
    if (observer == "imatrix") != (importance is not None):
        raise ValueError("the imatrix observer takes per-input importances; the other observers take none")
    out, cols = weight.shape
    if group_size == -1:
        scale, zero = fit_params(weight, bits, symmetric, observer, importance)
        return QuantParams(bits, -1, symmetric, scale[:, None], zero[:, None])
    if group_size < 1 or cols % group_size:
        raise ConfigError(f"group size {group_size} does not divide the weight's {cols} inputs; "
                          f"group sizes that do: {', '.join(map(str, dividing_group_sizes([cols]))) or 'none'}")
    g = cols // group_size
    imp = None if importance is None else importance.reshape(g, group_size)
    scale, zero = fit_params(weight.reshape(out, g, group_size), bits, symmetric, observer, imp)
    return QuantParams(bits, group_size, symmetric, scale, zero)
