"""Pruning masks from scores: per-row unstructured, N:M, whole-matrix; and checks on them.

Masks are boolean "keep" tensors shaped like the weight (True = keep). Selection uses sort
indices, never a threshold, so the number of zeros is exact even when scores tie (the
default model's weights sit on a 4-bit grid, so ties are common).
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import ConfigError

UNSTRUCTURED = "unstructured"
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for "unstructured", else (n, m) for "N:M" = keep N of every M consecutive weights."""
    if not isinstance(pattern, str):
        raise ConfigError(f"pattern must be a string ('unstructured' or 'N:M' such as '2:4'), got {pattern!r}")
    if pattern.strip().lower() == UNSTRUCTURED:
        return None
    match = _NM.match(pattern)
    if not match:
        raise ConfigError(f"pattern {pattern!r} is not valid; use 'unstructured' or 'N:M' "
                          "(keep N of every M consecutive input weights), e.g. '2:4' or '4:8'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"pattern {pattern!r}: N:M needs 0 < N < M (N weights kept of every M), got N={n}, M={m}")
    return n, m


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be a number in [0, 1) (fraction of weights set to zero), got {sparsity!r}")
    return float(sparsity)


def n_pruned(width: int, sparsity: float) -> int:
    """floor(width * sparsity), robust to float noise (0.29 * 100 = 28.999999999999996 -> 29)."""
    return int(math.floor(width * sparsity + 1e-9))


def lowest_k_mask(scores: torch.Tensor, k: int, dim: int = 1) -> torch.Tensor:
    """Keep-mask zeroing the k lowest scores along `dim` (every slice loses exactly k)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        idx = torch.topk(scores, k, dim=dim, largest=False, sorted=False).indices
        keep.scatter_(dim, idx, False)
    return keep


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask zeroing the floor(in * sparsity) lowest scores of every row."""
    return lowest_k_mask(scores, n_pruned(scores.shape[1], sparsity), dim=1)


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask zeroing the floor(numel * sparsity) lowest scores of the whole matrix."""
    k = n_pruned(scores.numel(), sparsity)
    flat = scores.flatten()
    if not k:
        return torch.ones_like(scores, dtype=torch.bool)
    # kthvalue is O(n) where a full sort is O(n log n); ties at the threshold are pruned
    # first-come by position so that exactly k go.
    thresh = torch.kthvalue(flat, k).values
    pruned = flat < thresh
    ties = torch.nonzero(flat == thresh).squeeze(1)
    pruned[ties[: k - int(pruned.sum())]] = True
    return (~pruned).view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the n highest scores in every group of m consecutive inputs of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"N:M pattern {n}:{m} needs the input width to be a multiple of {m}, got {cols}")
    return lowest_k_mask(scores.reshape(rows, cols // m, m), m - n, dim=2).view(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                scope: str = "row") -> torch.Tensor:
    """One entry point: N:M if nm is given, else unstructured per row or per matrix."""
    if nm is not None:
        return nm_mask(scores, *nm)
    if scope == "row":
        return row_mask(scores, sparsity)
    if scope == "matrix":
        return matrix_mask(scores, sparsity)
    raise ConfigError(f"mask scope must be 'row' or 'matrix', got {scope!r}")


def target_sparsity(sparsity: float | None, nm: tuple[int, int] | None) -> float:
    """The sparsity a pattern implies: 1 - N/M for N:M, else the requested one."""
    return 1 - nm[0] / nm[1] if nm is not None else float(sparsity)


# ---- checks -------------------------------------------------------------------------------

def zeros_per_row(weight: torch.Tensor) -> torch.Tensor:
    return (weight == 0).sum(dim=1)


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of m consecutive inputs of every row has at most n non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzero = (weight != 0).reshape(rows, cols // m, m).sum(dim=2)
    return bool((nonzero <= n).all())


def check_exact(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                scope: str = "row", allow_extra_zeros: bool = False) -> None:
    """Raise AssertionError unless a pruned weight has exactly the promised zeros.

    allow_extra_zeros: accept more zeros than promised (for weights that held exact zeros
    before pruning; kept weights are never changed to zero on purpose).
    """
    if nm is not None:
        assert satisfies_nm(weight, *nm), f"weight {tuple(weight.shape)} breaks the {nm[0]}:{nm[1]} pattern"
        if not allow_extra_zeros:
            want = weight.numel() // nm[1] * (nm[1] - nm[0])
            got = int((weight == 0).sum())
            assert got == want, f"weight {tuple(weight.shape)}: {got} zeros, expected {want}"
        return
    if scope == "matrix":
        want, got = n_pruned(weight.numel(), sparsity), (weight == 0).sum().reshape(1)
    else:
        want, got = n_pruned(weight.shape[1], sparsity), zeros_per_row(weight)
    ok = bool((got >= want).all()) if allow_extra_zeros else bool((got == want).all())
    bad = int(got.min()) if bool((got < want).any()) else int(got.max())
    assert ok, f"weight {tuple(weight.shape)} ({scope}): found {bad} zeros where {want} were expected"
