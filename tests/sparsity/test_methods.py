"""The math of each method on single matrices."""

import pytest
import torch
from torch import nn

from slimtune.calibration import StatsCollector
from slimtune.sparsity import magnitude_prune, n_pruned, sparsegpt_prune, wanda_prune, wanda_scores
from slimtune.sparsity.masks import satisfies_nm


def _structured_problem(seed=0, n=2048, d_in=64, d_out=48):
    """Correlated inputs with uneven feature scales (like LLM activations) and a random weight."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / d_in ** 0.5 + torch.eye(d_in)
    scales = torch.exp(torch.randn(d_in, generator=g))
    x = (torch.randn(n, d_in, generator=g) @ mix) * scales
    w = torch.randn(d_out, d_in, generator=g)
    return w, x


def test_wanda_scores_match_direct_computation_on_a_linear():
    w, x = _structured_problem(1)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
    linear.weight.data.copy_(w)
    collector = StatsCollector({"lin": linear}, ["sqnorm"], stop_early=False)
    with collector, torch.no_grad():
        for part in x.view(4, -1, x.shape[1]):  # 4 chunks of calibration tokens
            linear(part)
            collector.end_chunk()
    stats = collector.finish()[0]
    assert stats.n_tokens == x.shape[0]
    direct = w.abs() * x.norm(dim=0)  # |W_ij| * ||X_j||_2 over all tokens
    torch.testing.assert_close(wanda_scores(w, stats.sqnorm), direct, rtol=1e-5, atol=1e-5)
    pruned = wanda_prune(w, stats.sqnorm, 0.5)
    k = n_pruned(w.shape[1], 0.5)
    lowest = direct.argsort(dim=1)[:, :k]
    assert (pruned.gather(1, lowest) == 0).all()
    assert ((pruned == 0).sum(1) == k).all()
    kept = pruned != 0
    assert torch.equal(pruned[kept], w[kept])  # Wanda does not update kept weights


def _hessian(x):
    return 2 * x.t() @ x / x.shape[0]


def _err(w, w_hat, x):
    return ((x @ (w - w_hat).t()) ** 2).sum().item()


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.7, None), (None, (2, 4)), (None, (4, 8))])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(sparsity, nm):
    w, x = _structured_problem(2)
    p = 0.5 if sparsity is None else sparsity
    h, sqnorm = _hessian(x), (x ** 2).sum(0)
    sgpt = sparsegpt_prune(w, h, p, nm, block_size=16)  # several blocks
    mag = magnitude_prune(w, p, nm, scope="row")
    wan = wanda_prune(w, sqnorm, p, nm)
    e_sgpt, e_mag, e_wan = _err(w, sgpt, x), _err(w, mag, x), _err(w, wan, x)
    assert e_sgpt < 0.95 * e_wan and e_wan < e_mag
    if nm is None:
        assert ((sgpt == 0).sum(1) == n_pruned(w.shape[1], p)).all()
    else:
        assert satisfies_nm(sgpt, *nm) and int((sgpt == 0).sum()) == w.numel() // 2


def test_sparsegpt_zero_sparsity_is_identity():
    w, x = _structured_problem(3)
    assert torch.equal(sparsegpt_prune(w, _hessian(x), 0.0), w)


def test_sparsegpt_block_size_does_not_break_exactness():
    w, x = _structured_problem(4, d_in=72)  # 72 = 4 blocks of 16 + a partial block of 8
    out = sparsegpt_prune(w, _hessian(x), 0.5, block_size=16)
    assert ((out == 0).sum(1) == 36).all()


def test_sparsegpt_handles_dead_inputs():
    w, x = _structured_problem(5)
    x[:, [3, 10, 11]] = 0  # features never active
    out = sparsegpt_prune(w, _hessian(x), 0.25)
    assert torch.isfinite(out).all()
    assert ((out == 0).sum(1) == n_pruned(w.shape[1], 0.25)).all()
    assert (out[:, [3, 10, 11]] == 0).all()  # free to remove, so removed first
    # Removing a dead input moves nothing else: with only dead inputs pruned, live weights stay.
    k = 3 / w.shape[1]
    only_dead = sparsegpt_prune(w, _hessian(x), k)
    live = torch.ones(w.shape[1], dtype=torch.bool)
    live[[3, 10, 11]] = False
    torch.testing.assert_close(only_dead[:, live], w[:, live])


def test_sparsegpt_matches_exact_obs_on_one_column():
    # Pruning only the first column: the optimal update is w -= w_0 * [H^-1]_{0,:} / [H^-1]_00.
    w, x = _structured_problem(6, d_in=16, d_out=4)
    h = _hessian(x).double()
    h_damped = h + 0.01 * torch.diagonal(h).mean() * torch.eye(16, dtype=h.dtype)
    hinv = torch.linalg.inv(h_damped)
    col = torch.zeros(16, dtype=torch.bool)
    col[0] = True
    # Make column 0 the one to prune in every row: tiny weights there.
    w[:, 0] = 1e-3
    out = sparsegpt_prune(w, h.float(), 1 / 16, block_size=16)
    expected = w.double() - w.double()[:, :1] * hinv[0] / hinv[0, 0]
    assert (out[:, 0] == 0).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-6)
