"""PaCA (adapters/paca.py): only the selected columns train, zeros stay, INT4 merges land on the same
grid, the merge is the trained function on a float base, and the artifact round-trips through merge."""

import pytest
import torch

from slimtune.adapters import merge_adapters
from slimtune.adapters.paca import (PacaLinear, add_paca, load_paca, rank_equivalent_columns, save_paca,
                                    select_columns)
from slimtune.quant import QuantLinear, compute_params


def _base(sparse=False, quant=False, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(32, 16)
    if sparse:
        with torch.no_grad():
            base.weight.masked_fill_(torch.rand(16, 32) < 0.5, 0.0)
    if quant:
        params = compute_params(base.weight.detach(), 4, 8, False)
        base = QuantLinear.from_codes(params, params.quantize(base.weight.detach()), base.bias.detach())
    return base


def _train(layer, steps=5, lr=0.05):
    opt = torch.optim.AdamW([layer.paca_weight], lr=lr, weight_decay=0.1)
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 7, 32)
        loss = (layer(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_only_the_selected_columns_change_and_zeros_stay_zero():
    base = _base(sparse=True)
    w0 = base.weight.detach().clone()
    idx = torch.tensor([1, 5, 9, 30])
    layer = PacaLinear(base, idx, sparse=True)
    _train(layer)
    w = layer.effective_weight()
    other = torch.ones(32, dtype=torch.bool)
    other[idx] = False
    assert torch.equal(w[:, other], w0[:, other])  # untouched columns bit for bit
    assert not torch.equal(w[:, idx], w0[:, idx])  # the selected ones trained
    assert torch.all(w[w0 == 0] == 0)  # and the base's zeros stayed zero
    assert torch.equal(base.weight, w0)  # the frozen base itself is not modified before merge
    with torch.no_grad():
        x = torch.randn(3, 32)
        trained = layer(x)
        merged = layer.merge()
        assert torch.equal(merged(x), trained)  # the merge is the trained function exactly (float base)
        assert torch.all(merged.weight[w0 == 0] == 0)


def test_gradient_is_the_weight_gradient_of_the_selected_columns():
    base = _base()
    idx = torch.tensor([0, 3, 4])
    layer = PacaLinear(base, idx)
    x = torch.randn(2, 5, 32, requires_grad=True)
    layer(x).pow(2).sum().backward()
    w = base.weight.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, base.bias).pow(2).sum().backward()
    torch.testing.assert_close(layer.paca_weight.grad, w.grad[:, idx])
    torch.testing.assert_close(x.grad, x2.grad)


def test_int4_base_trains_in_float_and_merges_onto_the_same_grid():
    base = _base(sparse=True, quant=True)
    codes0, scales0, zeros0 = base.codes().clone(), base.scales.clone(), base.zeros.clone()
    deq0 = base.dequantized_weight()
    idx = torch.tensor([2, 8, 17])
    layer = PacaLinear(base, idx, sparse=True)
    _train(layer)
    trained = layer.effective_weight()
    merged = merge_adapters(torch.nn.Sequential(layer))[0]
    assert isinstance(merged, QuantLinear)
    assert torch.equal(merged.scales, scales0) and torch.equal(merged.zeros, zeros0)  # same grid
    other = torch.ones(32, dtype=torch.bool)
    other[idx] = False
    assert torch.equal(merged.codes()[:, other], codes0[:, other])
    assert not torch.equal(merged.codes()[:, idx], codes0[:, idx])
    assert torch.all(merged.dequantized_weight()[deq0 == 0] == 0)  # zeros kept through the re-quantization
    assert torch.equal(merged.dequantized_weight(), base.params.fake_quantize(trained))  # the codes of W_trained
    assert layer.merge_error() > 0  # the rounding (and clamping to the group's range) the float training pays at merge


def test_selection_and_rank_equivalent_columns():
    w = torch.zeros(4, 10)
    w[:, 7], w[:, 2] = 3.0, 2.0
    assert select_columns(w, 2, "weight").tolist() == [2, 7]
    assert select_columns(w, 2, "activation", activation_sqnorm=torch.arange(10.0)).tolist() == [8, 9]
    g = torch.Generator().manual_seed(0)
    assert len(set(select_columns(w, 5, "random", g).tolist())) == 5
    assert rank_equivalent_columns(16, 576, 576) == 32 and rank_equivalent_columns(16, 1536, 576) == 59
    assert rank_equivalent_columns(64, 32, 16) == 32


def test_artifact_round_trip_and_merge_stage(tiny_llama_dir, tmp_path):
    from slimtune import api
    from slimtune.artifacts import Artifact
    from slimtune.models import load_model

    out = api.finetune(tiny_llama_dir, out=tmp_path / "paca", adapter="paca", targets=["q_proj", "down_proj"],
                       rank=4, paca={"selection": "activation"}, max_steps=3, batch_size=4, max_length=48,
                       learning_rate=1e-2, progress=False)
    art = Artifact.load(out)
    assert art.method == "paca" and set(art.metrics["columns"].values()) == {8, 12}  # 4·(64+64)/64, 4·(128+64)/64
    assert not (out / "adapter_config.json").exists()  # not a PEFT adapter
    net, tok = load_model(tiny_llama_dir)
    load_paca(net, out)
    ids = tok(["a fine film"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = net(input_ids=ids).logits
    merged_dir = api.merge(out, out=tmp_path / "merged")
    merged, _ = load_model(merged_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=0, atol=1e-5)
    net2, _ = load_model(tiny_llama_dir)
    layers = add_paca(net2, ["model.layers.0.self_attn.q_proj"], columns=3, seed=1)
    save_paca(net2, tmp_path / "p2")
    assert layers["model.layers.0.self_attn.q_proj"].columns.numel() == 3
    with pytest.raises(Exception, match="does not fit"):
        load_paca(torch.nn.Sequential(), tmp_path / "p2")
