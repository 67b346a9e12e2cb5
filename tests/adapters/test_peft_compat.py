"""Sparse and quantization-aware adapters are not plain LoRAs: stock PEFT must refuse them, not
silently compute the unmasked, off-grid update; slimtune's loader reproduces them exactly."""

import json

import pytest
import torch

from slimtune.adapters import add_lora, load_adapter, lora_layers, merge_lora, save_adapter
from slimtune.adapters.peft_io import (SLIMTUNE_WEIGHTS_FILE, WEIGHTS_FILE, adapter_mode, adapter_modules,
                                       peft_compatible)
from slimtune.artifacts import write_manifest
from slimtune.errors import ArtifactError
from slimtune.models import load_model, target_modules
from slimtune.quant import compute_params
from slimtune.quant.linear import quantize_model_linears
from slimtune.summary import format_summary, summarize

TEXT = ["the prime minister said on monday", "rain fell on the city"]
# (kind written as peft_type, sparse, quant_aware, merged into the float weights)
MODES = {"sparsepeft": ("SPARSEPEFT", True, False, False),
         "qa-sparsepeft": ("QA_SPARSEPEFT", True, True, False),
         "qa-sparsepeft-float": ("QA_SPARSEPEFT", True, True, True),
         "qa-lora": ("QA_LORA", False, True, False)}


def _base(model_dir, quantized: bool):
    """The tiny Llama with half of its q/v/down weights zeroed, optionally on a 4-bit grid (group 16)."""
    net, tok = load_model(model_dir)
    names = target_modules(net, ["q_proj", "v_proj", "down_proj"])
    g = torch.Generator().manual_seed(0)
    floats = {}
    with torch.no_grad():
        for n in names:
            w = net.get_submodule(n).weight
            w.masked_fill_(torch.rand(w.shape, generator=g) < 0.5, 0.0)
            floats[n] = w.detach().clone()
    if quantized:
        grids = {n: compute_params(w, bits=4, group_size=16, symmetric=True) for n, w in floats.items()}
        quantize_model_linears(net, {n: (p, p.quantize(floats[n])) for n, p in grids.items()})
    return net, tok, names, floats


def _set_factors(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.3)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)


def _logits(net, tok):
    with torch.no_grad():
        return net(**tok(TEXT, return_tensors="pt", padding=True)).logits


def _trained(model_dir, mode):
    _, sparse, quant_aware, use_floats = MODES[mode]
    net, tok, names, floats = _base(model_dir, quant_aware)
    add_lora(net, names, r=4, alpha=8, sparse=sparse, quant_aware=quant_aware,
             qa_weights=floats if use_floats else None)
    _set_factors(net)
    return net, tok, names, floats


@pytest.mark.parametrize("mode", list(MODES))
def test_stock_peft_refuses_sparse_and_quant_aware_adapters_and_slimtune_reproduces_them(tiny_llama_dir, tmp_path, mode):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kind, sparse, quant_aware, use_floats = MODES[mode]
    net, tok, names, floats = _trained(tiny_llama_dir, mode)
    ours = _logits(net, tok)
    ad = save_adapter(net, tmp_path / "ad", base_model_name_or_path=str(tiny_llama_dir))

    config = json.loads((ad / "adapter_config.json").read_text())
    assert config["peft_type"].startswith(f"{kind} (slimtune): not a plain LoRA")
    assert config["slimtune"] == {"kind": kind, "sparse": sparse, "quant_aware": quant_aware,
                                  "qa_weights": ("float" if use_floats else "quantized") if quant_aware else None}
    assert sorted(p.name for p in ad.iterdir()) == ["adapter_config.json", SLIMTUNE_WEIGHTS_FILE]
    assert not peft_compatible(ad)
    with pytest.raises(KeyError, match=r"not a plain LoRA.*`slimtune merge --adapter DIR"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(ad))
    with pytest.raises(KeyError, match="slimtune.api.load_adapted"):  # transformers' own PEFT integration
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir).load_adapter(str(ad))

    # slimtune's loader gives back the trained function, to the last bit
    again, _, _, _ = _base(tiny_llama_dir, quant_aware)
    load_adapter(again, ad, qa_weights=floats if use_floats else None)
    assert {n: (l.sparse, l.quant_aware) for n, l in lora_layers(again).items()} == {n: (sparse, quant_aware) for n in names}
    assert adapter_modules(ad) == sorted(names)
    assert torch.equal(_logits(again, tok), ours)
    merge_lora(again)
    torch.testing.assert_close(_logits(again, tok), ours, rtol=0, atol=1e-5)

    # what a plain LoRA with the same factors computes (PEFT's reading): far from the trained function
    plain, _, _, _ = _base(tiny_llama_dir, quant_aware)
    add_lora(plain, names, r=4, alpha=8)
    _set_factors(plain)
    assert (_logits(plain, tok) - ours).abs().max() > 0.05


def test_plain_lora_stays_a_standard_peft_adapter_and_overwrites_drop_the_other_kinds_files(tiny_llama_dir, tmp_path):
    net, tok, names, _ = _base(tiny_llama_dir, quantized=False)
    add_lora(net, names, r=4, alpha=8)
    _set_factors(net)
    ad = save_adapter(net, tmp_path / "ad")
    config = json.loads((ad / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "slimtune" not in config
    assert sorted(p.name for p in ad.iterdir()) == ["adapter_config.json", WEIGHTS_FILE]
    assert peft_compatible(ad)
    assert "a plain LoRA: peft.PeftModel.from_pretrained loads it" in format_summary(summarize(ad))

    sparse, _, _, _ = _trained(tiny_llama_dir, "sparsepeft")
    save_adapter(sparse, ad)  # into the same directory: the plain weights must not stay beside it
    assert sorted(p.name for p in ad.iterdir()) == ["adapter_config.json", SLIMTUNE_WEIGHTS_FILE]
    summary = summarize(ad)
    assert summary["peft_compatible"] is False and summary["ranks"] == {n: 4 for n in names}
    assert "peft.PeftModel cannot apply it; use `slimtune merge`" in format_summary(summary)
    save_adapter(net, ad)
    assert sorted(p.name for p in ad.iterdir()) == ["adapter_config.json", WEIGHTS_FILE]


def test_a_float_qa_adapter_needs_its_float_weights(tiny_llama_dir, tmp_path):
    net, _, _, _ = _trained(tiny_llama_dir, "qa-sparsepeft-float")
    ad = save_adapter(net, tmp_path / "ad")
    base, _, _, _ = _base(tiny_llama_dir, quantized=True)
    with pytest.raises(ArtifactError, match="float weights .* pass them as qa_weights"):
        load_adapter(base, ad)  # without them it would merge into the dequantized base: another function
    with pytest.raises(ArtifactError, match="names no float_base"):
        adapter_mode(ad)
    write_manifest(ad, stage="finetune", method="qa-sparsepeft", config={"float_base": "/models/float"})
    assert adapter_mode(ad) == {"sparse": True, "quant_aware": True, "qa_weights": "float",
                                "float_base": "/models/float"}


def test_an_older_sparse_adapter_saved_as_peft_lora_is_flagged_and_still_loads_masked(tiny_llama_dir, tmp_path):
    sparse, tok, names, _ = _trained(tiny_llama_dir, "sparsepeft")
    expected = _logits(sparse, tok)
    legacy, _, _, _ = _base(tiny_llama_dir, quantized=False)  # how slimtune used to write it: as a plain LoRA
    add_lora(legacy, names, r=4, alpha=8)
    _set_factors(legacy)
    ad = save_adapter(legacy, tmp_path / "ad")
    write_manifest(ad, stage="finetune", method="sparsepeft", config={"sparse": True, "quant_aware": False})
    assert json.loads((ad / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not peft_compatible(ad)  # PEFT would load it, unmasked
    again, _, _, _ = _base(tiny_llama_dir, quantized=False)
    load_adapter(again, ad)
    assert torch.equal(_logits(again, tok), expected)


def test_layers_of_mixed_modes_are_not_saved_as_one_adapter(tiny_llama_dir, tmp_path):
    net, _, names, _ = _base(tiny_llama_dir, quantized=False)
    add_lora(net, names[:1], r=4, alpha=8, sparse=True)
    add_lora(net, names[1:], r=4, alpha=8)
    with pytest.raises(ArtifactError, match="mix modes"):
        save_adapter(net, tmp_path / "ad")


def test_a_damaged_adapter_names_the_missing_weights(tiny_llama_dir, tmp_path):
    net, _, _, _ = _trained(tiny_llama_dir, "sparsepeft")
    ad = save_adapter(net, tmp_path / "ad")
    (ad / SLIMTUNE_WEIGHTS_FILE).rename(ad / WEIGHTS_FILE)  # someone "fixing" it for PEFT
    base, _, _, _ = _base(tiny_llama_dir, quantized=False)
    with pytest.raises(ArtifactError, match=f"has no {SLIMTUNE_WEIGHTS_FILE}"):
        load_adapter(base, ad)
