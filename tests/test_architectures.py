"""The architecture map: exact default targets, Shears groups and compressed sets per family."""

import pytest

from slimtune.architectures import architecture_of, decoder_layers, matches, split_block
from slimtune.errors import ConfigError
from slimtune.models import load_model, target_modules
from slimtune.nas.space import ElasticSpace

LLAMA_BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
BERT_BLOCK = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"]


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_gemma3_dir, tiny_bert_dir):
    return {"llama": load_model(tiny_llama_dir)[0], "gemma3": load_model(tiny_gemma3_dir)[0],
            "bert": load_model(tiny_bert_dir)[0]}


@pytest.mark.parametrize("arch,prefix,block,layers", [
    ("llama", "model.layers", LLAMA_BLOCK, 2), ("gemma3", "model.layers", LLAMA_BLOCK, 4),
    ("bert", "encoder.layer", BERT_BLOCK, 2)])
def test_default_targets_are_exactly_the_block_roles(models, arch, prefix, block, layers):
    model = models[arch]
    assert architecture_of(model).name == arch
    assert decoder_layers(model)[0] == prefix
    assert target_modules(model) == [f"{prefix}.{i}.{m}" for i in range(layers) for m in block]


def test_bert_pooler_is_neither_a_target_nor_compressed(models):
    from slimtune.quant.quantize import validate_quantize_args
    from slimtune.sparsity.sparsify import validate_sparsify_args

    model = models["bert"]
    assert "pooler.dense" not in target_modules(model)
    magnitude = validate_sparsify_args(model, None, "magnitude")
    assert "pooler.dense" in magnitude.left_dense and "pooler.dense" not in magnitude.targets
    assert magnitude.targets == target_modules(model)
    rtn = validate_quantize_args(model, None, "rtn", bits=4, group_size=32)
    assert rtn.targets == target_modules(model)


@pytest.mark.parametrize("arch,expected", [
    ("llama", {"qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o_proj": ["self_attn.o_proj"],
               "gate_up": ["mlp.gate_proj", "mlp.up_proj"], "down": ["mlp.down_proj"]}),
    ("bert", {"qkv": ["attention.self.query", "attention.self.key", "attention.self.value"],
              "attention.output.dense": ["attention.output.dense"], "gate_up": ["intermediate.dense"],
              "down": ["output.dense"]}),
])
def test_shears_groups_from_roles(models, arch, expected):
    model = models[arch]
    names = target_modules(model)
    space = ElasticSpace.build(names, [4, 2], "shears", architecture_of(model))
    block0 = {g.split(":", 1)[1]: [split_block(m)[1] for m in grp.modules]
              for g, grp in space.groups.items() if g.startswith(split_block(names[0])[0] + ":")}
    assert block0 == expected
    assert len(space.groups) == len(expected) * model.config.num_hidden_layers


def test_heads_and_kv_groups(models):
    assert architecture_of(models["gemma3"]).heads(models["gemma3"].config) == (4, 2, 16)
    assert architecture_of(models["llama"]).heads(models["llama"].config) == (4, 2, 16)
    assert architecture_of(models["bert"]).heads(models["bert"].config) == (4, 4, 16)


@pytest.mark.parametrize("name,pattern,hit", [
    ("model.layers.0.self_attn.q_proj", "q_proj", True),
    ("model.layers.0.self_attn.q_proj", "self_attn.q_proj", True),
    ("model.layers.0.self_attn.q_proj", "proj", False),
    ("model.layers.0.self_attn.q_proj", "model.layers.*.q_proj", True),
    ("model.layers.0.self_attn.q_proj", r"model\.layers\.0\..*", True),
    ("model.layers.0.self_attn.q_proj", "[qk]_proj", True),
    ("model.layers.0.self_attn.q_proj", "re:.*layers\\.1\\..*", False),
    ("pooler.dense", "output.dense", False),
    ("encoder.layer.0.attention.output.dense", "output.dense", True),
])
def test_one_matcher(name, pattern, hit):
    assert matches(name, pattern) is hit


def test_bad_regex_is_a_clear_error():
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        matches("a.b", "re:(")
