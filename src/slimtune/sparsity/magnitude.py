"""Magnitude pruning: drop the weights of smallest |W|; needs no calibration data."""

from __future__ import annotations

import torch

from .masks import select_mask


def magnitude_prune(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                    scope: str = "matrix") -> torch.Tensor:
    """Return a pruned copy of `weight` (float32).

    scope="matrix" (default) ranks the whole matrix at once, as the magnitude baselines of
    Wanda/SparseGPT and llm-compressor do; scope="row" ranks each output row separately.
    """
    w = weight.detach().to(torch.float32)
    return torch.where(select_mask(w.abs(), sparsity, nm, scope=scope), w, 0.0)
