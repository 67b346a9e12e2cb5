"""Elastic dimensions: width slicing equals a physically smaller model; sizes; the JSON round trip."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimtune.adapters import add_lora, lora_layers
from slimtune.architectures import architecture_of
from slimtune.errors import ArtifactError, ConfigError
from slimtune.models import load_model, target_modules
from slimtune.nas import ELASTIC_VERSION, Binding, Dimension, ElasticSpace, SearchSpace
from slimtune.nas.elastic import WidthLinear
from slimtune.nas.subnetwork import extract_subnetwork
from slimtune.nas.widths import head_dimensions, mlp_width_dimensions

IDS = torch.tensor([[1, 17, 240, 31, 77, 5, 300, 12, 9, 64, 101, 3]])


def _logits(net):
    with torch.no_grad():
        return net(input_ids=IDS).logits


def _width_space(net):
    return SearchSpace([*mlp_width_dimensions(net), *head_dimensions(net)])


def _random_config(space, seed):
    import random

    rng = random.Random(seed)
    return {n: rng.choice(d.choices) for n, d in space.dimensions.items()}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_width_slices_equal_a_physically_smaller_model(arch, tiny_llama_dir, tiny_gemma3_dir, tmp_path):
    net, _ = load_model(tiny_llama_dir if arch == "llama" else tiny_gemma3_dir)
    net.eval()
    space = _width_space(net)
    heads = next(d for n, d in space.dimensions.items() if n.endswith(":heads"))
    assert heads.choices == [2, 1]  # 4 query heads over 2 KV groups: whole groups only
    assert [b.unit for b in heads.bindings] == [32, 16, 16, 32]  # q, k, v per head dim; o per group of 2 heads
    assert next(iter(space.dimensions.values())).choices == [128, 112, 96, 80, 64]
    full = _logits(net)
    uniform = {n: (64 if n.endswith(":mlp") else 1) for n in space.dimensions}
    space.apply(net, uniform)
    assert any(isinstance(m, WidthLinear) for m in net.modules())
    sliced = _logits(net)
    small = extract_subnetwork(net, space, uniform)
    assert small.config.intermediate_size == 64 and small.config.num_attention_heads == 2
    assert small.config.num_key_value_heads == 1
    assert sum(p.numel() for p in small.parameters()) == space.size(net, uniform) < space.size(net, space.maximal())
    torch.testing.assert_close(_logits(small), sliced, rtol=0, atol=1e-5)
    small.save_pretrained(tmp_path / "small")  # a uniform width is a stock model of the smaller config
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(_logits(again), sliced, rtol=0, atol=1e-5)
    mixed = _random_config(space, 3)
    assert len(set(mixed.values())) > 2
    space.apply(net, mixed)
    torch.testing.assert_close(_logits(extract_subnetwork(net, space, mixed)), _logits(net), rtol=0, atol=1e-5)
    space.apply(net, space.maximal())  # back to full width: plain nn.Linear again, same outputs
    assert not any(isinstance(m, WidthLinear) for m in net.modules())
    torch.testing.assert_close(_logits(net), full, rtol=0, atol=0)


def test_ranks_and_widths_on_lora_layers_equal_the_extracted_model(tiny_llama_dir):
    net, _ = load_model(tiny_llama_dir)
    names = target_modules(net)
    add_lora(net, names, r=8, alpha=16, rank_space=[8, 4, 2], seed=0)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_B.weight.normal_(0, 0.05)
    net.eval()
    space = ElasticSpace.build(names, [8, 4, 2], "shears", architecture_of(net)) + _width_space(net)
    assert {d.kind for d in space.dimensions.values()} == {"rank", "width"}
    for seed in range(3):
        config = _random_config(space, seed)
        space.apply(net, config)
        small = extract_subnetwork(net, space, config)
        torch.testing.assert_close(_logits(small), _logits(net), rtol=0, atol=1e-5)
        assert sum(p.numel() for p in small.parameters()) == space.size(net, config)
        assert all(layer.rank_space is None for layer in lora_layers(small).values())
    # gradients flow into the kept slices only
    net.train()
    config = {n: d.choices[-1] for n, d in space.dimensions.items()}
    space.apply(net, config)
    net(input_ids=IDS, labels=IDS).loss.backward()
    down = lora_layers(net)["model.layers.0.mlp.down_proj"]
    assert down.lora_A.weight.grad[:2, :64].abs().sum() > 0
    assert down.lora_A.weight.grad[:, 64:].abs().sum() == 0 and down.lora_A.weight.grad[2:].abs().sum() == 0


def test_rank_only_space_keeps_the_legacy_size_and_reads_version_1(tmp_path):
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    space = ElasticSpace.build(names, [8, 6, 4], "block")
    assert space.size({"model.layers.0": 4}, {n: (64, 32) for n in names}) == 4 * 96 * 2 + 8 * 96 * 2
    old = {"preset": "block", "groups": {g: {"modules": d.modules, "space": d.choices}
                                         for g, d in space.dimensions.items()}}
    (tmp_path / "elastic_config.json").write_text(json.dumps(old))
    assert SearchSpace.load(tmp_path).to_dict() == space.to_dict() == {"version": 1, **old}


def test_search_space_json_round_trip_and_checks(tiny_llama_dir, tmp_path):
    net, _ = load_model(tiny_llama_dir)
    space = _width_space(net)
    space.save(tmp_path)
    again = SearchSpace.load(tmp_path)
    assert json.loads((tmp_path / "elastic_config.json").read_text())["version"] == ELASTIC_VERSION == 2
    assert again.to_dict() == space.to_dict() and list(again.dimensions) == list(space.dimensions)
    assert again.median() == space.median() and again.minimal() == space.minimal()
    assert space.median()["model.layers.0:mlp"] == 96
    with pytest.raises(ConfigError, match="outside its space"):
        space.check({"model.layers.0:mlp": 100})
    with pytest.raises(ConfigError, match="bound by two dimensions"):
        SearchSpace([Dimension("a", [4, 2], [Binding("x", "out")]), Dimension("b", [4, 2], [Binding("x", "out")])])
    with pytest.raises(ConfigError, match="no LoRA layer"):
        ElasticSpace.build(["model.layers.0.self_attn.q_proj"], [4, 2], "module").apply(net, {})
    (tmp_path / "elastic_config.json").write_text(json.dumps({**space.to_dict(), "version": 3}))
    with pytest.raises(ArtifactError, match="version 3 is not one this slimtune reads"):
        SearchSpace.load(tmp_path)
