"""INT4 weight-only matmul with torch's packed int4 kernel (CPU), for QuantLinear's inference path.

torch (2.13) ships `aten._convert_weight_to_int4pack_for_cpu(int32 codes [N, K], innerKTiles)`
-> uint8 [N, K/2] (its own nibble order) and `aten._weight_int4pack_mm_for_cpu(x [M, K], packed,
group, scales_and_zeros [K/group, N, 2])` -> [M, N], which computes per group
    w = (q - 8) * scale + zero.
slimtune's grid is w = s * (q - z) with integer z, i.e. scale = s and zero = s * (8 - z)
(symmetric grids: z = 8, zero = 0). The kernel takes groups of 32, 64, 128 or 256 inputs; a grid
whose groups are a multiple of one of those (192 = 3 x 64; per-channel: the whole row) maps
exactly by repeating each scale, so every 4-bit grid with contiguous groups and N % 16 == 0 uses
it. Finer groups (16), other bit widths, permuted groups (g_idx) and other shapes do not
(`unsupported`), and QuantLinear falls back to its dequantized weight.

Precision: the kernel's fast path is bfloat16 (on this CPU the float32 and float16 paths are
~10-80x slower than a dense float32 matmul, the bfloat16 path as fast or faster), so activations,
scales and zero offsets are rounded to bfloat16 and the output is returned in the input's dtype.
That is not exact: measured on smollm2-135m (bench/int4.py) the logits differ from the dequantized
float32 reference by a few hundredths (see bench/RESULTS.md), which is why evaluation keeps the exact
dequantized path by default. Zeros: a pruned weight (q = z) gives exactly 0 on symmetric grids; on
asymmetric grids (q - 8) * scale + zero leaves a bf16 rounding residue of ~2^-9 * |zero|.
No autograd: the op has no derivative, so QuantLinear uses it only when no gradient is needed.

Memory: in kernel mode a QuantLinear keeps only the kernel's packed copy (0.5 bytes per weight plus
bf16 scale/offset pairs) and drops its own packed codes; `unpack_codes` gives them back exactly
(the kernel's layout depends on the CPU, so they are read through the kernel itself: an identity
input with scale 1 and offset 0 returns q - 8, small integers that bfloat16 holds exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KERNEL_GROUPS = (256, 128, 64, 32)
ACT_DTYPE = torch.bfloat16


def kernel_group(group_size: int, in_features: int) -> int | None:
    """The kernel group (32..256) a grid's groups are a whole multiple of, or None."""
    span = in_features if group_size == -1 else group_size
    return next((k for k in KERNEL_GROUPS if span % k == 0 and in_features % k == 0), None)


def unsupported(bits: int, group_size: int, in_features: int, out_features: int, plain_groups: bool,
                device: torch.device) -> str | None:
    """Why the kernel cannot run this layer (a short reason), or None when it can."""
    if bits != 4:
        return f"{bits}-bit codes (the kernel is 4-bit)"
    if not plain_groups:
        return "permuted groups (g_idx)"
    if kernel_group(group_size, in_features) is None:
        return (f"group size {group_size} is not a multiple of 32, 64, 128 or 256 dividing {in_features} inputs")
    if out_features % 16:
        return f"{out_features} outputs (the kernel needs a multiple of 16)"
    if device.type != "cpu":
        return f"device {device.type} (the kernel path is wired and tested for CPU only)"
    return None


@dataclass
class Int4Weight:
    """One weight in the kernel's layout: packed uint8 [N, K/2] and bf16 scales/zeros [K/g, N, 2]."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor
    group: int
    out_features: int
    in_features: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales_zeros))


@torch.no_grad()
def pack_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> Int4Weight:
    """codes uint8 [N, K] in [0, 15]; scales float32 and integer zeros [N, G] of slimtune's grid."""
    n, k = codes.shape
    group = kernel_group(group_size, k)
    if group is None:
        raise ValueError(f"group size {group_size} does not map onto the int4 kernel's groups")
    repeat = (k if group_size == -1 else group_size) // group
    s = scales.to(torch.float32).repeat_interleave(repeat, dim=1)
    z = zeros.to(torch.float32).repeat_interleave(repeat, dim=1)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    sz = torch.stack([s, s * (8.0 - z)], dim=-1).transpose(0, 1).contiguous().to(ACT_DTYPE)
    return Int4Weight(packed, sz, group, n, k)


UNPACK_ROWS = 512  # identity rows per kernel call in unpack_codes (bounds its temporary memory)


@torch.no_grad()
def unpack_codes(w: Int4Weight) -> torch.Tensor:
    """The uint8 [N, K] codes that pack_weight packed, read back exactly through the kernel."""
    k, n = w.in_features, w.out_features
    unit = torch.zeros(k // w.group, n, 2, dtype=ACT_DTYPE)
    unit[..., 0] = 1.0
    codes = torch.empty(n, k, dtype=torch.uint8)
    for start in range(0, k, UNPACK_ROWS):
        rows = min(UNPACK_ROWS, k - start)
        eye = torch.zeros(rows, k, dtype=ACT_DTYPE)
        eye[:, start:start + rows].fill_diagonal_(1.0)
        q = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, w.packed, w.group, unit)  # [rows, N] = q - 8
        codes[:, start:start + rows] = (q.to(torch.float32) + 8.0).to(torch.uint8).T
    return codes


def matmul(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ dequantized(w).T (+ bias), computed in bfloat16, returned in x's dtype."""
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1]).to(ACT_DTYPE).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, w.packed, w.group, w.scales_zeros).to(x.dtype)
    if bias is not None:
        y = y.add_(bias.to(x.dtype))
    return y.reshape(*lead, w.out_features)
