import pytest
import torch

from slimtune.errors import ConfigError
from slimtune.quant import QuantParams, compute_params, gptq_quantize, rtn_quantize


def _problem(seed=0, rows=48, cols=128, sparsity=0.0):
    """Correlated inputs (as in real activations), a random weight, optionally pruned."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, cols, generator=g) @ (0.3 * torch.randn(cols, cols, generator=g) + torch.eye(cols))
    x[:, 7] = 0                                            # a dead input
    w = torch.randn(rows, cols, generator=g)
    if sparsity:
        w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w, x, 2 / x.shape[0] * x.t() @ x


def _out_err(w, wq, x):
    return float(((w - wq) @ x.t()).norm())


def test_rtn_is_the_direct_formula():
    w, _, _ = _problem()
    params, codes = rtn_quantize(w, 4, 32, False)
    ref = compute_params(w, 4, 32, False)
    assert params == ref
    s, z = ref.scales.repeat_interleave(32, 1), ref.zeros.repeat_interleave(32, 1).float()
    assert torch.equal(codes.float(), torch.clamp(torch.round(w / s + z), 0, 15))


@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_output(group_size, symmetric, act_order):
    w, x, h = _problem()
    p, c, loss = gptq_quantize(w, h, 4, group_size, symmetric, act_order)
    pr, cr = rtn_quantize(w, 4, group_size, symmetric)
    assert loss > 0
    assert _out_err(w, p.dequantize(c), x) < 0.85 * _out_err(w, pr.dequantize(cr), x)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
def test_gptq_keeps_every_zero_of_a_sparse_weight(symmetric, act_order, group_size):
    w, x, h = _problem(seed=1, sparsity=0.5)
    p, c, _ = gptq_quantize(w, h, 4, group_size, symmetric, act_order)
    wq = p.dequantize(c)
    assert ((wq[w == 0]) == 0).all()                        # every zero kept, to the last weight
    assert int((wq == 0).sum()) >= int((w == 0).sum())
    assert p.scales.max() <= w.abs().max()                  # the sweep's pruned-entry scale stays internal
    assert torch.equal(c[w == 0].int(), p.zeros.repeat_interleave(
        w.shape[1] if group_size == -1 else group_size, 1)[w == 0])
    pr, cr = rtn_quantize(w, 4, group_size, symmetric)
    assert _out_err(w, wq, x) < _out_err(w, pr.dequantize(cr), x)


def test_act_order_uses_static_groups_from_original_weights():
    w, _, h = _problem(seed=2)
    p, c, _ = gptq_quantize(w, h, 4, 32, True, act_order=True)
    # contiguous groups, computed up front (by default with the imatrix observer: H's diagonal)
    assert p == compute_params(w, 4, 32, True, "imatrix", torch.diagonal(h))
    assert p.g_idx is None
    p, c, _ = gptq_quantize(w, h, 4, 32, True, act_order=True, observer="minmax")
    assert p == compute_params(w, 4, 32, True)


def _group_errors(w, params, importance=None):
    """Per (row, group) rounding error sum importance * (w_hat - w)^2 for a grid of groups of 32."""
    err = (params.fake_quantize(w) - w).square()
    if importance is not None:
        err = err * importance
    return err.reshape(w.shape[0], -1, 32).sum(-1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("observer", ["mse", "imatrix"])
def test_searched_scales_beat_minmax_and_come_near_the_finest_search(symmetric, observer):
    w, x, h = _problem(seed=4, rows=64, cols=128)
    imp = torch.diagonal(h) if observer == "imatrix" else None
    p = compute_params(w, 4, 32, symmetric, observer, imp)
    ref = compute_params(w, 4, 32, symmetric)
    assert torch.equal(p.zeros, ref.zeros)                   # the search moves scales only
    ours, minmax = _group_errors(w, p, imp), _group_errors(w, ref, imp)
    assert (ours <= minmax).all() and float(ours.sum()) < 0.95 * float(minmax.sum())
    # Brute force over every shrink 0.20..1.04 in steps of 0.01: the two-stage search is within 2%.
    best = None
    for k in range(20, 105):
        cand = QuantParams(4, 32, symmetric, ref.scales * (k / 100), ref.zeros)
        e = _group_errors(w, cand, imp)
        best = e if best is None else torch.minimum(best, e)
    assert float(ours.sum()) <= 1.02 * float(best.sum())


def test_imatrix_spends_the_grid_on_the_inputs_that_matter():
    w, _, _ = _problem(seed=5, rows=64, cols=128)
    imp = torch.ones(128)
    imp[::4] = 100.0                                         # every fourth input carries most of the signal
    by_imp = compute_params(w, 4, 32, False, "imatrix", imp)
    plain = compute_params(w, 4, 32, False, "mse")
    assert float(_group_errors(w, by_imp, imp).sum()) < 0.95 * float(_group_errors(w, plain, imp).sum())


@pytest.mark.parametrize("observer", ["mse", "imatrix"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_searched_scales_keep_zeros_exact(observer, symmetric):
    w, _, h = _problem(seed=6, sparsity=0.5)
    p = compute_params(w, 4, 32, symmetric, observer, torch.diagonal(h) if observer == "imatrix" else None)
    assert (p.fake_quantize(w)[w == 0] == 0).all()
    pg, cg, _ = gptq_quantize(w, h, 4, 32, symmetric, observer=observer)
    assert (pg.dequantize(cg)[w == 0] == 0).all()


def test_observer_arguments_are_checked():
    w, _, h = _problem()
    with pytest.raises(ConfigError, match="unknown observer 'max'; choose from minmax, mse, imatrix"):
        compute_params(w, 4, 32, True, "max")
    with pytest.raises(ValueError, match="imatrix observer takes per-input importances"):
        compute_params(w, 4, 32, True, "imatrix")


def test_gptq_codes_lie_on_the_grid():
    w, _, h = _problem(seed=3)
    for bits in (2, 3, 8):
        p, c, _ = gptq_quantize(w, h, bits, 64, False)
        assert int(c.max()) <= 2 ** bits - 1 and torch.equal(p.quantize(p.dequantize(c)), c)
