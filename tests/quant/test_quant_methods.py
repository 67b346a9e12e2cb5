import pytest
import torch

from slimtune.quant import compute_params, gptq_quantize, rtn_quantize


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
    assert torch.equal(c[w == 0].int(), p.zeros.repeat_interleave(
        w.shape[1] if group_size == -1 else group_size, 1)[w == 0])
    pr, cr = rtn_quantize(w, 4, group_size, symmetric)
    assert _out_err(w, wq, x) < _out_err(w, pr.dequantize(cr), x)


def test_act_order_uses_static_groups_from_original_weights():
    w, _, h = _problem(seed=2)
    p, c, _ = gptq_quantize(w, h, 4, 32, True, act_order=True)
    assert p == compute_params(w, 4, 32, True)             # contiguous groups, computed up front
    assert p.g_idx is None


def test_gptq_codes_lie_on_the_grid():
    w, _, h = _problem(seed=3)
    for bits in (2, 3, 8):
        p, c, _ = gptq_quantize(w, h, bits, 64, False)
        assert int(c.max()) <= 2 ** bits - 1 and torch.equal(p.quantize(p.dequantize(c)), c)
