"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row (or N:M group)."""

from __future__ import annotations

import torch

from .masks import select_mask


def wanda_scores(weight: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| * ||X_j||_2, with sqnorm_j = sum over calibration tokens of X_j^2."""
    return weight.detach().to(torch.float32).abs() * sqnorm.to(torch.float32).sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, sqnorm: torch.Tensor, sparsity: float,
                nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Return a pruned copy of `weight` (float32); pruned entries are exactly 0."""
    w = weight.detach().to(torch.float32)
    return torch.where(select_mask(wanda_scores(w, sqnorm), sparsity, nm, scope="row"), w, 0.0)
