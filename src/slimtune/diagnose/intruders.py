"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

For a weight matrix W (out × in) and its tuned version W' = W + ΔW, take the reduced SVDs
W = U·Σ·Vᵀ and W' = U'·Σ'·V'ᵀ. Among the top k left singular vectors of W' (the columns of U' with
the k largest singular values), an *intruder* is one whose cosine similarity with every left
singular vector of W is below ε in absolute value:

    intruder(i)  <=>  max_j |<u'_i, u_j>| < ε        (i < k, j over all min(out, in) columns of U)

Singular vectors are unit vectors, so the cosine is the dot product; the absolute value makes the
count independent of the SVD's arbitrary signs. Defaults as in the paper: k = 10, ε = 0.5. The
base's singular vectors are those of the reduced SVD (min(out, in) of them), as in the paper's code.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

DEFAULT_K = 10
DEFAULT_EPSILON = 0.5


def check_settings(k, epsilon) -> tuple[int, float]:
    """k a positive integer, ε in the open interval (0, 1); else a ConfigError naming the value."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (how many top singular vectors of the tuned weight to test) must be an integer >= 1, "
                          f"got {k!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 < float(epsilon) < 1.0 \
            or math.isnan(float(epsilon)):
        raise ConfigError(f"epsilon (the cosine-similarity threshold) must be in the open interval (0, 1), "
                          f"got {epsilon!r}")
    return k, float(epsilon)


def left_singular(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, S) of the reduced SVD of `w` in float64, singular values descending."""
    u, s, _ = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
    return u, s


def max_similarities(base_u: torch.Tensor, tuned_u: torch.Tensor, k: int) -> torch.Tensor:
    """For each of the first k columns of `tuned_u`: its largest |cosine| with any column of `base_u`."""
    top = tuned_u[:, :k]
    return (top.T @ base_u).abs().amax(dim=1).clamp_(max=1.0)


def intruder_dimensions(base: torch.Tensor, tuned: torch.Tensor, k: int = DEFAULT_K,
                        epsilon: float = DEFAULT_EPSILON) -> dict:
    """The intruder test of one matrix: {k, intruders, max_sim (per top-k vector of the tuned weight,
    in order of its singular values), intruder_index, sigma (the tuned weight's top-k singular values),
    relative_update (‖W' - W‖_F / ‖W‖_F)}. k is capped at min(out, in)."""
    k, epsilon = check_settings(k, epsilon)
    if base.dim() != 2 or tuple(base.shape) != tuple(tuned.shape):
        raise ConfigError(f"the base and tuned weights must be matrices of one shape, got {tuple(base.shape)} "
                          f"and {tuple(tuned.shape)}")
    base_u, _ = left_singular(base)
    tuned_u, tuned_s = left_singular(tuned)
    k = min(k, tuned_u.shape[1])
    sims = max_similarities(base_u, tuned_u, k)
    index = [i for i, v in enumerate(sims.tolist()) if v < epsilon]
    base64, tuned64 = base.detach().to(torch.float64), tuned.detach().to(torch.float64)
    norm = float(base64.norm())
    return {"k": k, "intruders": len(index), "max_sim": [round(v, 6) for v in sims.tolist()],
            "intruder_index": index, "sigma": [float(v) for v in tuned_s[:k]],
            "relative_update": float((tuned64 - base64).norm()) / norm if norm > 0 else None}


def summarize(rows: list[dict], k: int, epsilon: float) -> dict:
    """Totals of per-module rows: intruders in all, modules with any, the mean per module, and the
    smallest max-similarity seen."""
    counts = [r["intruders"] for r in rows]
    sims = [v for r in rows for v in r["max_sim"]]
    return {"k": k, "epsilon": epsilon, "modules": len(rows), "total_intruders": sum(counts),
            "modules_with_intruders": sum(1 for c in counts if c),
            "mean_intruders_per_module": sum(counts) / len(counts) if counts else 0.0,
            "min_max_sim": min(sims) if sims else None}
