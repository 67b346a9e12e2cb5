"""The adapter pipelines end to end on a tiny Llama: LoRA/NLS on dense, sparse and sparse-INT4 bases,
then extract and merge (SparsePEFT and QA-SparsePEFT merges are exact)."""

import json

import pytest
import torch

from slimtune import api
from slimtune.adapters import lora_layers
from slimtune.errors import ArtifactError, ConfigError
from slimtune.models import load_model
from slimtune.quant import quant_linears
from slimtune.quant.formats import read_packed_layers

TRAIN = dict(max_steps=4, batch_size=4, grad_accum=2, learning_rate=2e-2, warmup_steps=0, save_steps=50,
             max_length=64, seed=3, progress=False)


@pytest.fixture(scope="module")
def sparse_dir(tiny_llama_dir, tmp_path_factory, news_snippet):
    out = tmp_path_factory.mktemp("bases") / "sparse"
    return api.sparsify(tiny_llama_dir, out=out, method="wanda", sparsity=0.5, progress=False,
                        calibration={"source": news_snippet, "n_samples": 4, "seq_len": 32, "seed": 0})


@pytest.fixture(scope="module")
def sparse_int4_dir(sparse_dir, news_snippet):
    return api.quantize(sparse_dir, out=sparse_dir.parent / "sparse-int4", method="gptq", bits=4, group_size=16,
                        symmetric=False, progress=False,
                        calibration={"source": news_snippet, "n_samples": 4, "seq_len": 32, "seed": 0})


def _logits(net, tok, text="the market fell sharply on monday"):
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return net(ids).logits


def _weights(model_dir):
    net, _ = load_model(model_dir)
    return {n: m.weight.detach().clone() for n, m in net.named_modules()
            if n.startswith("model.layers") and hasattr(m, "weight") and m.weight.dim() == 2}


def test_nls_sub_adapter_loads_in_peft_with_the_super_adapters_logits(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    sup = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "super", adapter="nls",
                       rank_space=[8, 6, 4], alpha=16, dropout=0.0, **TRAIN)
    elastic = json.loads((sup / "elastic_config.json").read_text())
    assert elastic["preset"] == "shears"
    assert set(elastic["groups"]) == {f"model.layers.{i}:{k}" for i in range(2) for k in ("qkv", "gate_up", "down", "o_proj")}
    history = json.loads((sup / "elastic_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4] and all(h["loss"] > 0 for h in history)
    manifest = json.loads((sup / "slimtune.json").read_text())
    assert manifest["method"] == "nls" and manifest["metrics"]["sampled_steps"] == 4
    assert sum(manifest["metrics"]["rank_frequencies"]["model.layers.0:qkv"].values()) == 4

    config = {"model.layers.0:qkv": 4, "model.layers.1:down": 6}
    sub = api.extract(sup, out=tmp_path / "sub", select=config)
    adapter_cfg = json.loads((sub / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8
    assert adapter_cfg["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 4, "model.layers.0.self_attn.k_proj": 4,
                                           "model.layers.0.self_attn.v_proj": 4, "model.layers.1.mlp.down_proj": 6}
    assert adapter_cfg["alpha_pattern"]["model.layers.1.mlp.down_proj"] == 12.0  # 16 * 6 / 8: same scaling
    net, tok = api.load_adapted(tiny_llama_dir, sup)
    from slimtune.nas import ElasticSpace

    ElasticSpace.load(sup).apply(net, config)
    expected = _logits(net, tok)
    base, _ = load_model(tiny_llama_dir)
    peft_model = PeftModel.from_pretrained(base, str(sub))
    torch.testing.assert_close(_logits(peft_model, tok), expected, rtol=1e-5, atol=1e-5)
    assert json.loads((sub / "slimtune.json").read_text())["metrics"]["adapter_parameters"] < \
        json.loads((sub / "slimtune.json").read_text())["metrics"]["maximal_parameters"]


def test_sparsepeft_merge_keeps_every_zero_and_the_logits(sparse_dir, tmp_path):
    ad = api.finetune(sparse_dir, task="polarity", out=tmp_path / "ad", adapter="nls", rank_space=[8, 4],
                      sparse_adapter=True, **TRAIN)
    assert json.loads((ad / "slimtune.json").read_text())["method"] == "sparsepeft+nls"
    sub = api.extract(ad, out=tmp_path / "sub", select="minimal")
    merged = api.merge(sub, out=tmp_path / "merged")
    before, after = _weights(sparse_dir), _weights(merged)
    for name, w in before.items():
        assert torch.equal(after[name] == 0, w == 0), name  # the same zeros, to the last weight
    assert any(not torch.equal(after[n], before[n]) for n in before)  # and the update did land
    net, tok = api.load_adapted(sparse_dir, sub)
    merged_net, _ = load_model(merged)
    torch.testing.assert_close(_logits(merged_net, tok), _logits(net, tok), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qa_weights", ["quantized", "float"])
def test_qa_sparsepeft_merge_is_exact_on_the_same_grid(sparse_dir, sparse_int4_dir, tmp_path, qa_weights):
    from transformers import AutoModelForCausalLM

    ad = api.finetune(sparse_int4_dir, task="polarity", out=tmp_path / "ad", adapter="nls", rank_space=[8, 4],
                      sparse_adapter=True, quant_aware=True, qa_weights=qa_weights, **TRAIN)
    manifest = json.loads((ad / "slimtune.json").read_text())
    assert manifest["method"] == "qa-sparsepeft+nls"
    if qa_weights == "float":  # defaults to the model the quantized base was made from
        assert manifest["config"]["float_base"] == str(sparse_dir)
    sub = api.extract(ad, out=tmp_path / "sub", select="median")
    merged = api.merge(sub, out=tmp_path / "merged")

    net, tok = api.load_adapted(sparse_int4_dir, sub)  # the quantization-aware forward
    qa_logits = _logits(net, tok)
    merged_net, _ = load_model(merged)
    assert (_logits(merged_net, tok) - qa_logits).abs().max() <= 1e-5
    base_net, _ = load_model(sparse_int4_dir)
    base_q, merged_q = quant_linears(base_net), quant_linears(merged_net)
    assert set(base_q) == set(merged_q) and base_q
    changed = 0
    mask_source = _weights(sparse_dir) if qa_weights == "float" else {n: q.weight for n, q in base_q.items()}
    for name, q in base_q.items():
        assert merged_q[name].params.to_bytes() == q.params.to_bytes(), name  # byte-identical grid
        pruned = mask_source[name] == 0
        assert (merged_q[name].weight[pruned] == 0).all(), name  # every pruned weight still zero
        changed += int(not torch.equal(merged_q[name].qweight, q.qweight))
    assert changed > 0
    assert {p.bits for _, p, _ in read_packed_layers(merged)} == {4}
    plain = AutoModelForCausalLM.from_pretrained(str(merged))  # the standard loader reads it
    torch.testing.assert_close(_logits(plain, tok), qa_logits, rtol=1e-4, atol=1e-4)


def test_lora_on_a_quantized_base_merges_to_float_for_re_quantization(sparse_int4_dir, tmp_path):
    ad = api.finetune(sparse_int4_dir, task="polarity", out=tmp_path / "ad", rank=4, dropout=0.0, **TRAIN)
    merged = api.merge(ad, out=tmp_path / "merged")
    net, _ = load_model(merged)
    assert not quant_linears(net)
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())


def test_sampling_is_once_per_optimizer_step_and_reproducible(tiny_llama_dir, tmp_path):
    from slimtune.adapters import add_lora
    from slimtune.data import load_task
    from slimtune.nas import ElasticSampler, ElasticSpace
    from slimtune.train import TrainConfig, train

    def run(seed, checkpointing):
        net, tok = load_model(tiny_llama_dir)
        names = [n for n, _ in net.named_modules() if n.endswith(("q_proj", "down_proj"))]
        add_lora(net, names, r=8, alpha=16, rank_space=[8, 4, 2], seed=0)
        space = ElasticSpace.build(names, [8, 4, 2], "block")
        sampler = ElasticSampler(net, space, seed=seed)
        seen = []  # the active rank of one layer at every forward, training and recomputation alike
        layer = lora_layers(net)[names[0]]
        layer.register_forward_pre_hook(lambda m, a: seen.append(m.active_rank) if torch.is_grad_enabled() else None)
        config = TrainConfig(max_steps=6, batch_size=2, grad_accum=3, warmup_steps=0, learning_rate=1e-3,
                             max_length=32, seed=1, gradient_checkpointing=checkpointing)
        train(net, tok, load_task("polarity").train[:40], config, tmp_path / f"ck{seed}{checkpointing}",
              callbacks=[sampler], progress=False)
        return sampler.history, seen, layer.active_rank

    history, seen, after = run(seed=5, checkpointing=True)
    ranks = [h["config"]["model.layers.0"] for h in history]
    per_step = len(seen) // 6
    assert per_step == 6  # 3 micro-batches, each run forward twice (gradient checkpointing recomputes)
    assert seen == [r for r in ranks for _ in range(per_step)]  # one sub-adapter per optimizer step
    assert after == 8  # outside training: maximal
    again, _, _ = run(seed=5, checkpointing=False)
    assert [h["config"] for h in again] == [h["config"] for h in history]
    other, _, _ = run(seed=6, checkpointing=False)
    assert [h["config"] for h in other] != [h["config"] for h in history]


def test_bad_adapter_options_are_rejected_before_work(tiny_llama_dir, sparse_dir, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match="strictly descending"):
        api.finetune(tiny_llama_dir, out=out, adapter="nls", rank_space=[16, 24, 8])
    with pytest.raises(ConfigError, match="rank above it"):
        api.finetune(tiny_llama_dir, out=out, adapter="nls", rank=16, rank_space=[32, 16])
    with pytest.raises(ConfigError, match="use adapter nls with rank_space"):
        api.finetune(tiny_llama_dir, out=out, rank_space=[16, 8])
    with pytest.raises(ConfigError, match="not one; quantize it first"):
        api.finetune(sparse_dir, out=out, quant_aware=True)
    with pytest.raises(ConfigError, match="drop --sparse-adapter, or sparsify the base first"):
        api.finetune(tiny_llama_dir, out=out, sparse_adapter=True)
    with pytest.raises(ConfigError, match="set dropout 0"):
        api.finetune(sparse_dir, out=out, sparse_adapter=True, dropout=0.1)
    assert not out.exists()


def test_bad_extraction_configs_are_rejected(tiny_llama_dir, tmp_path):
    sup = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       **{**TRAIN, "max_steps": 1})
    with pytest.raises(ConfigError, match="unknown rank group"):
        api.extract(sup, out=tmp_path / "a", select={"model.layers.9:qkv": 4})
    with pytest.raises(ConfigError, match="outside its space"):
        api.extract(sup, out=tmp_path / "a", select={"model.layers.0:qkv": 3})
    with pytest.raises(ConfigError, match="unknown sub-adapter selection"):
        api.extract(sup, out=tmp_path / "a", select="best")
    plain = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "plain", rank=2, **{**TRAIN, "max_steps": 1})
    with pytest.raises(ArtifactError, match="not an elastic super-adapter"):
        api.extract(plain, out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_nncf_selection_scores_candidates_on_validation(tiny_llama_dir, tmp_path):
    sup = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       groups="block", **TRAIN)
    sub = api.extract(sup, out=tmp_path / "sub", select="nncf", limit=6, progress=False)
    manifest = json.loads((sub / "slimtune.json").read_text())
    candidates = manifest["metrics"]["candidates"]
    assert candidates[0]["label"] == "median" and 2 <= len(candidates) <= 7
    best = max(c["score"] for c in candidates)
    assert manifest["config"]["selection"].startswith("nncf:")
    chosen = next(c for c in candidates if manifest["config"]["selection"] == "nncf:" + c["label"])
    assert chosen["score"] == best and manifest["config"]["ranks"] == chosen["config"]
