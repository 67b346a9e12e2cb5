"""GPTQ (Frantar et al.): quantize columns in order, pushing each column's rounding error onto the
columns not yet quantized, through the upper Cholesky factor of H^-1 (H = 2/n X X^T).

What slimtune's version does, and why:
- H comes from calibration inputs layer by layer (run_layerwise), so each block's inputs come
  from the already-quantized blocks; with all samples in one batch (the default) each group of
  linears is quantized from the inputs the already-quantized linears before it produce (the
  paper's true-sequential option) and every block runs once. Matrices reading the same input
  (q/k/v, gate/up) share H and are processed as one stack of rows.
- Group scales come from an observer (params.OBSERVERS). The default, imatrix, picks each group's
  scale from a shrink search that weighs each column's rounding error by H_jj: the diagonal of
  the objective GPTQ then minimizes. "minmax" is the paper's grid.
- Dampening lambda = damp * mean(diag H) (default 0.01; SQFT uses 0.1); dead inputs (H_jj = 0)
  get H_jj = 1, which decouples them: their weights are rounded and move nothing else (the
  reference zeroes them instead; rounding is safer for inputs the calibration text never hit).
  Both come from SparseGPT's hinv_cholesky, shared with the sparsity package.
- Lazy batch updates over blocks of ~128 columns. The block length is rounded to a multiple of
  the group size, so a group never straddles blocks and its parameters are computed
  when the group starts, from the fully error-updated weights (the reference takes them from
  weights that lack the current block's updates when a group starts mid-block).
- act_order: columns in order of decreasing diag(H), with STATIC groups: the group parameters
  are computed up front from the original weights in the original column order, so groups
  stay contiguous (g_idx = j // group_size, which needs no storing) and export formats that
  expect contiguous groups still apply.
- Sparsity-preserving: a weight that is exactly 0 on input ends exactly 0. Like a weight
  SparseGPT prunes, it is fixed at its turn in the sweep to 0 (code q = z, which dequantizes to
  exactly 0 because z is an integer and 0 is inside every group's range), and whatever error
  compensation earlier columns had pushed onto it is passed on to the later columns instead of
  being dropped. (Dropping it, i.e. masking the propagation, left GPTQ no better than RTN on a
  50%-sparse test problem; passing it on gave an 8% lower output error.) Group ranges
  are taken with pruned entries counted as 0.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..errors import SlimtuneError
from ..sparsity.sparsegpt import hinv_cholesky
from .params import DEFAULT_BITS, DEFAULT_GROUP_SIZE, QuantParams, check_bits, check_observer, compute_params, fit_params

# The sweep's scale for a pruned entry: w / 2^100 rounds to 0 for any float32 weight, so the
# entry's code is z (exactly 0 after dequantization), its dequantized value (q - z) * s is 0 and
# its whole current value becomes the error passed on, with no per-column select in the loop.
# A power of two keeps the division exact; 2^100 * 0 = 0 (no inf) since 2^100 < float32 max.
_PRUNED_SCALE = 2.0 ** 100


@contextmanager
def _one_thread():
    """The column loop is thousands of tiny ops: with 2 intra-op threads on a busy 2-core CPU a
    single 128x576 addr_ was seen to take 20 ms instead of 7 us (waiting for a preempted
    worker). One thread avoids that; the big block updates still get every thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _block_length(block_size: int, group_size: int, dynamic: bool) -> int:
    if not dynamic:
        return block_size
    return group_size * max(1, round(block_size / group_size))


def _sub_block(step: int, group_size: int, dynamic: bool, target: int = 32) -> int:
    """Columns per sub-block: inside a block, a column's error goes onto the rest of its sub-block
    at once and a sub-block's errors onto the rest of the block as one GEMM (the lazy-batch
    argument again, one level down), which cuts the per-column updates' memory traffic ~4x.
    Dynamic groups start at sub-block boundaries, so their weights are fully updated when their
    parameters are taken."""
    sub = math.gcd(group_size, target) if dynamic else target
    return sub if sub >= 8 else step


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = DEFAULT_BITS, group_size: int = DEFAULT_GROUP_SIZE,
                  symmetric: bool = True, act_order: bool = False, damp: float = 0.01,
                  block_size: int = 128, observer: str = "imatrix") -> tuple[QuantParams, torch.Tensor, float]:
    """(QuantParams, uint8 codes [out, in], loss) for weight [out, in] given H [in, in].

    observer: how group scales are chosen (params.OBSERVERS); "imatrix" weighs each column's
    rounding error by its Hessian diagonal. loss = sum over columns of ||err||^2 / [U]_jj^2 / 2,
    GPTQ's own objective estimate.
    """
    bits = check_bits(bits)
    check_observer(observer)
    importance = torch.diagonal(hessian).to(torch.float32) if observer == "imatrix" else None
    rows, cols = weight.shape
    maxq = (1 << bits) - 1
    w0 = weight.detach().to(torch.float32)
    perm = None
    h = hessian
    if act_order:
        perm = torch.argsort(torch.diagonal(hessian), descending=True, stable=True)
        h = hessian.index_select(0, perm).index_select(1, perm)
    try:
        upper, _ = hinv_cholesky(h, damp)
    except SlimtuneError as e:
        raise SlimtuneError(str(e).replace("SparseGPT", "GPTQ")) from None

    # Groups whose parameters are fixed before the sweep (act-order or one group per row).
    dynamic = group_size != -1 and not act_order
    static = None if dynamic else compute_params(w0, bits, group_size, symmetric, observer, importance)
    n_groups = 1 if group_size == -1 else cols // group_size

    # Work on W^T (permuted) so that one input column is one contiguous row of memory.
    wt = (w0 if perm is None else w0.index_select(1, perm)).t().contiguous()   # [cols, rows]
    pruned = wt == 0
    sparse = bool(pruned.any())
    if static is not None:  # each (permuted) column's scale and zero point, as rows
        orig = torch.arange(cols) if perm is None else perm
        col_group = torch.zeros(cols, dtype=torch.long) if group_size == -1 else orig // group_size
        s_cols = static.scales.t().index_select(0, col_group)               # [cols, rows]
        z_cols = static.zeros.t().to(torch.float32).index_select(0, col_group)
        if sparse:
            s_cols.masked_fill_(pruned, _PRUNED_SCALE)
    scales = torch.empty(n_groups, rows)
    zeros = torch.empty(n_groups, rows)
    codes = torch.empty(cols, rows, dtype=torch.uint8)
    loss = torch.zeros((), dtype=torch.float64)

    step = _block_length(block_size, group_size, dynamic)
    sub = _sub_block(step, group_size, dynamic)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        count = i2 - i1
        w1 = wt[i1:i2]                                  # view: updates land in wt
        u1 = upper[i1:i2, i1:i2]
        diag = torch.diagonal(u1).tolist()
        if static is not None:
            s1, z1 = s_cols[i1:i2], z_cols[i1:i2]
        else:
            s1, z1 = torch.empty_like(w1), torch.empty_like(w1)
        q1 = torch.empty_like(w1)                       # codes, as floats
        err = torch.empty_like(w1)
        with _one_thread():
            for i in range(count):
                j = i1 + i
                if i % sub == 0 and i:  # the sub-block's errors, onto the rest of the block at once
                    w1[i:].addmm_(u1[i - sub:i, i:].t(), err[i - sub:i], alpha=-1.0)
                w, q, e = w1[i], q1[i], err[i]
                if dynamic and j % group_size == 0:
                    group = w1[i:i + group_size]             # whole group inside this block: current weights
                    if sparse:
                        group = group.masked_fill(pruned[j:j + group_size], 0.0)
                    imp = None if importance is None else importance[j:j + group_size]
                    s, z = fit_params(group.t(), bits, symmetric, observer, imp)
                    scales[j // group_size], zeros[j // group_size] = s, z
                    s1[i:i + group_size], z1[i:i + group_size] = s, z
                    if sparse:
                        s1[i:i + group_size].masked_fill_(pruned[j:j + group_size], _PRUNED_SCALE)
                s, z = s1[i], z1[i]
                # In place and into preallocated rows: this loop runs once per input column.
                torch.div(w, s, out=q).add_(z).round_().clamp_(0, maxq)
                torch.sub(q, z, out=e).mul_(s)
                torch.sub(w, e, out=e).div_(diag[i])          # the column's scaled error
                end = min(i - i % sub + sub, count)
                if i + 1 < end:
                    # rank-1 update as a 1-wide matmul: Tensor.addr_ takes a slow path on CPU
                    w1[i + 1:end].addmm_(u1[i, i + 1:end].unsqueeze(1), e.unsqueeze(0), alpha=-1.0)
        codes[i1:i2] = q1.to(torch.uint8)
        loss += float(torch.linalg.vector_norm(err)) ** 2 / 2
        if i2 < cols:
            wt[i2:].addmm_(upper[i1:i2, i2:].t(), err, alpha=-1.0)

    codes = codes.t()
    if perm is not None:
        codes = codes.index_select(1, torch.argsort(perm))
    if static is not None:
        params = QuantParams(bits, group_size, symmetric, static.scales, static.zeros)
    else:
        params = QuantParams(bits, group_size, symmetric, scales.t(), zeros.t())
    return params, codes.contiguous(), float(loss)
