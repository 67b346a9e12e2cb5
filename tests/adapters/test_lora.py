import json

import pytest
import torch

from slimtune.adapters import add_lora, load_adapter, lora_layers, merge_lora, save_adapter
from slimtune.adapters.lora import LoraLinear
from slimtune.errors import ConfigError
from slimtune.models import load_model, target_modules


def _random_lora(seed=0, dropout=0.0, dtype=torch.float64):
    torch.manual_seed(seed)
    base = torch.nn.Linear(12, 7).to(dtype)
    layer = LoraLinear(base, r=4, alpha=8, dropout=dropout).to(dtype)
    torch.nn.init.normal_(layer.lora_B.weight)
    return layer


def test_forward_is_base_plus_scaled_low_rank_update():
    layer = _random_lora()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    ref = layer.base_layer(x) + 2.0 * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert layer.scaling == 2.0
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    with torch.no_grad():  # the inference path computes the same thing
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)


def test_gradients_match_autograd_definition():
    layer = _random_lora()
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))
    layer(x).square().sum().backward()
    got = (layer.lora_A.weight.grad.clone(), layer.lora_B.weight.grad.clone(), x.grad.clone())
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (layer.base_layer(x2) + 2.0 * x2 @ a.T @ b.T).square().sum().backward()
    for g, r in zip(got, (a.grad, b.grad, x2.grad)):
        torch.testing.assert_close(g, r)
    assert layer.base_layer.weight.grad is None  # the base stays frozen


def test_dropout_uses_one_mask_for_forward_and_backward():
    layer = _random_lora(dropout=0.5)
    layer.train()
    x = torch.randn(64, 12, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    y = layer(x)
    y.sum().backward()
    # Recreate the mask from the same RNG state and check the output and dA.
    torch.manual_seed(1)
    mask = (torch.rand_like(x) >= 0.5).to(x.dtype) * 2.0
    xd = x.detach() * mask
    ref = layer.base_layer(x.detach()) + 2.0 * xd @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(y.detach(), ref)
    grad_a = (2.0 * torch.ones(64, 7, dtype=x.dtype) @ layer.lora_B.weight).T @ xd
    torch.testing.assert_close(layer.lora_A.weight.grad, grad_a.detach())
    layer.eval()  # no dropout outside training
    torch.testing.assert_close(layer(x), layer(x))


def test_new_adapter_is_identity(tiny_llama):
    model, tok = tiny_llama
    ids = tok(["the minister said on tuesday"], return_tensors="pt")
    before = model(**ids).logits
    add_lora(model, target_modules(model), r=4, alpha=8)
    torch.testing.assert_close(model(**ids).logits, before, rtol=0, atol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def _perturbed(model, targets, seed=0, **kw):
    add_lora(model, targets, **kw)
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
    return model


def test_peft_loads_saved_adapter_with_same_logits(tiny_llama, tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama
    names = target_modules(model)
    ranks = {names[0]: 2, names[3]: 6}
    alphas = {names[0]: 3.0}
    _perturbed(model, names, r=4, alpha=8, rank_pattern=ranks, alpha_pattern=alphas)
    ids = tok(["the prime minister said", "rain fell on the city"], return_tensors="pt", padding=True)
    ours = model(**ids).logits
    save_adapter(model, tmp_path / "ad", base_model_name_or_path=str(tiny_llama_dir))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["rank_pattern"] == ranks
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "ad")
    peft_model.eval()
    torch.testing.assert_close(peft_model(**ids).logits, ours, rtol=0, atol=1e-5)
    # and it loads back into slimtune with the same per-module ranks and outputs
    again, _ = load_model(tiny_llama_dir)
    load_adapter(again, tmp_path / "ad")
    assert {n: l.r for n, l in lora_layers(again).items()} == {n: ranks.get(n, 4) for n in names}
    torch.testing.assert_close(again(**ids).logits, ours, rtol=0, atol=1e-6)


def test_targets_subset_are_written_as_full_names(tiny_llama, tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama
    only_first_layer = [n for n in target_modules(model, ["q_proj", "v_proj"]) if ".layers.0." in n]
    _perturbed(model, only_first_layer, r=2, alpha=4)
    save_adapter(model, tmp_path / "ad")
    ids = tok(["the prime minister said"], return_tensors="pt")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "ad")
    torch.testing.assert_close(peft_model(**ids).logits, model(**ids).logits, rtol=0, atol=1e-5)
    assert sum(isinstance(m, torch.nn.Module) and hasattr(m, "lora_A") for _, m in peft_model.named_modules()) >= 2


def test_merge_matches_unmerged_logits(tiny_llama):
    model, tok = tiny_llama
    _perturbed(model, target_modules(model), r=4, alpha=8)
    ids = tok(["officials said the fire was contained"], return_tensors="pt")
    unmerged = model(**ids).logits
    merge_lora(model)
    assert not lora_layers(model)
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    torch.testing.assert_close(model(**ids).logits, unmerged, rtol=0, atol=1e-5)


def test_bad_rank_and_double_wrap_are_rejected(tiny_llama):
    model, _ = tiny_llama
    names = target_modules(model)
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        add_lora(model, names[:1], r=0)
    add_lora(model, names[:1], r=2)
    with pytest.raises(ConfigError, match=r"already has an adapter \(LoraLinear\); a LoRA adapter wraps"):
        add_lora(model, names[:1], r=2)


@pytest.mark.parametrize("p", [0.1, 0.5])  # 0.1: dropped positions drawn as gaps; 0.5: a mask
def test_dropout_forward_and_backward_agree(p):
    layer = _random_lora(dropout=p)
    layer.train()
    x = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)

    def seeded(x, a, b):  # the same dropout pattern on every call
        torch.manual_seed(7)
        return layer(x)

    assert torch.autograd.gradcheck(seeded, (x, layer.lora_A.weight, layer.lora_B.weight))


def test_sampled_drop_positions_have_the_dropout_rate():
    from slimtune.adapters.lora import _sample_drops

    torch.manual_seed(0)
    n, p = 200_000, 0.1
    idx = _sample_drops(n, p)
    assert idx.dtype == torch.int64 and (idx.diff() > 0).all() and 0 <= idx.min() and idx.max() < n
    assert abs(len(idx) / n - p) < 0.005
    hits = torch.zeros(n, dtype=torch.bool)
    hits[idx] = True
    pairs = (hits[:-1] & hits[1:]).float().mean().item()  # neighbours dropped independently
    assert abs(pairs - p * p) < 0.003


def test_an_adapter_added_to_a_model_in_eval_mode_applies_no_dropout(tiny_llama):
    model, tok = tiny_llama
    model.eval()
    add_lora(model, target_modules(model), r=4, alpha=8, dropout=0.5, seed=0)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight)
    ids = tok("stocks rose", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
