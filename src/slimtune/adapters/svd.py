"""SVD re-factorization of a trained LoRA adapter (FedSVD's server step, METHODS.md).

A module's update s·B·A (B: out × r, A: r × in) is rewritten as U·Σ·Vᵀ with its components ordered by
singular value, without forming the out × in product: B = Q_B·R_B and Aᵀ = Q_A·R_A (reduced QR), the
r × r core s·R_B·R_Aᵀ = U_c·Σ·V_cᵀ, so U = Q_B·U_c and V = Q_A·V_c. Truncated to rank r' it is the
adapter A' = V_r'ᵀ, B' = U_r'·Σ_r' / s with alpha' = s·r' (PEFT's scaling alpha'/r' stays s), which by
Eckart–Young is the best rank-r' approximation of the update in Frobenius norm: the error is
sqrt(sum of the dropped σ²). At full rank it reproduces the update.

A sparse (SparsePEFT) or quantization-aware adapter keeps its mode: the truncated update is masked by
the base's zeros (and put on the grid) at merge, as the original's was; Eckart–Young then holds for the
update before the mask. The ranks are per module: uniform (min(r', module rank)), explicit per module,
or allocated to a parameter budget (`allocate`).
"""

from __future__ import annotations

import heapq

import torch

from ..errors import ArtifactError, ConfigError


def factorize(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V), float64, with s·B·A = U·diag(S)·Vᵀ, S descending; U: out × m, V: in × m, m = min(r, out, in)."""
    qb, rb = torch.linalg.qr(b.detach().to(torch.float64))  # out × kb, kb × r
    qa, ra = torch.linalg.qr(a.detach().to(torch.float64).T)  # in × ka, ka × r
    uc, s, vch = torch.linalg.svd(float(scaling) * (rb @ ra.T), full_matrices=False)
    return qb @ uc, s, qa @ vch.T


def truncate(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, rank: int, scaling: float,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of rank `rank` with scaling·B'·A' = U_r·Σ_r·V_rᵀ: A' = V_rᵀ, B' = U_r·Σ_r / scaling."""
    if not 1 <= rank <= s.numel():
        raise ConfigError(f"rank {rank} is outside 1..{s.numel()} (the update's rank)")
    a = v[:, :rank].T
    b = u[:, :rank] * (s[:rank] / float(scaling))
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


def allocate(spectra: dict[str, tuple[torch.Tensor, int]], budget: int) -> dict[str, int]:
    """Per-module ranks whose parameters sum(r'·(in + out)) stay within `budget`, at least 1 per module,
    chosen greedily by the energy each component keeps per parameter (σ² / (in + out)) — within a module
    that is a prefix of its components, so each module keeps its largest ones. `spectra` maps a module to
    (its singular values, descending; in + out)."""
    ranks = {name: 1 for name in spectra}
    used = sum(cost for _, cost in spectra.values())
    if used > budget:
        raise ConfigError(f"a budget of {budget} adapter parameters is below rank 1 in every module ({used}); "
                          "give at least that much")
    heap = [(-float(s[1]) ** 2 / cost, name) for name, (s, cost) in spectra.items() if s.numel() > 1]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        s, cost = spectra[name]
        if used + cost > budget:
            continue  # a cheaper module's next component may still fit
        ranks[name] += 1
        used += cost
        if ranks[name] < s.numel():
            heapq.heappush(heap, (-float(s[ranks[name]]) ** 2 / cost, name))
    return ranks


def read_factors(adapter_dir) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """(adapter_config, {module: (A, B, scaling)}) of a saved adapter, as PEFT reads it: each module's rank
    is its A's rows and its scaling alpha/rank, alpha from alpha_pattern (an elastic super-adapter: the
    maximal rank)."""
    from .peft_io import PREFIX, _alpha_lookup, module_names, read_adapter

    config, tensors = read_adapter(adapter_dir)
    if config.get("use_rslora") or config.get("use_dora"):
        raise ConfigError(f"{adapter_dir} uses rsLoRA or DoRA; SVD re-factorization handles plain LoRA scaling only")
    alpha_of = _alpha_lookup(config)
    factors = {}
    for name in module_names(tensors):
        a, b = tensors.get(f"{PREFIX}{name}.lora_A.weight"), tensors.get(f"{PREFIX}{name}.lora_B.weight")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ArtifactError(f"{adapter_dir}: module {name} has no LoRA pair (lora_A, lora_B); the adapter is damaged")
        factors[name] = (a, b, alpha_of(name) / a.shape[0])
    if not factors:
        raise ArtifactError(f"{adapter_dir} holds no LoRA weights")
    return config, factors


def check_ranks(rank, budget, modules=None) -> None:
    """Exactly one of rank (an int >= 1, or {module: int >= 1} over known modules) and budget (an int >= 1)."""
    if (rank is None) == (budget is None):
        raise ConfigError("give either a rank (uniform, or per module) or a parameter budget, not "
                          + ("both" if rank is not None else "neither"))
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"budget (adapter parameters) must be a positive integer, got {budget!r}")
    values = rank.values() if isinstance(rank, dict) else [] if rank is None else [rank]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"a rank must be a positive integer, got {v!r}")
    if isinstance(rank, dict) and modules is not None:
        unknown = sorted(set(rank) - set(modules))
        if unknown:
            raise ConfigError(f"the adapter has no module {unknown[0]}; its modules are e.g. {sorted(modules)[:3]}")


def refactor_factors(factors: dict, rank=None, budget: int | None = None) -> tuple[dict, dict, dict]:
    """Re-factor every module and truncate it: `rank` uniform (capped at each module's rank) or per module
    ({module: rank}, others kept whole), or ranks allocated to a `budget` of adapter parameters.
    Returns ({module: (A', B')}, {module: alpha'}, {module: report})."""
    check_ranks(rank, budget, factors)
    svds = {name: factorize(a, b, s) for name, (a, b, s) in factors.items()}
    if budget is not None:
        ranks = allocate({n: (svds[n][1], a.shape[1] + b.shape[0]) for n, (a, b, _) in factors.items()}, budget)
    elif isinstance(rank, dict):
        ranks = {n: min(rank.get(n, svds[n][1].numel()), svds[n][1].numel()) for n in factors}
    else:
        ranks = {n: min(rank, svds[n][1].numel()) for n in factors}
    new, alphas, report = {}, {}, {}
    for name, (a, b, scaling) in factors.items():
        u, s, v = svds[name]
        r = ranks[name]
        new[name] = truncate(u, s, v, r, scaling, dtype=a.dtype)
        alphas[name] = float(scaling) * r
        dropped = float((s[r:] ** 2).sum())
        total = float((s ** 2).sum())
        report[name] = {"rank": r, "source_rank": int(a.shape[0]), "parameters": r * (a.shape[1] + b.shape[0]),
                        "sigma": [round(float(x), 6) for x in s], "frobenius_error": dropped ** 0.5,
                        "kept_energy": 1.0 - dropped / total if total > 0 else 1.0}
    return new, alphas, report
