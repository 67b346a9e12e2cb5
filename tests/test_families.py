"""Every stage on every supported family: the next family is one architecture-map entry plus one row.

Causal LMs (Llama, Gemma-3) run the whole SQFT pipeline: Wanda -> GPTQ INT4 -> NLS QA-SparsePEFT ->
extract -> merge (exact, on the base's grid) -> evaluate (task + perplexity + drift). The BERT
encoder runs the stages that apply to it (sparsify, quantize, reload) and, without a classification
head, is refused with a clear message by evaluation (finetune trains a classifier on it: tests/classify).
"""

import json

import pytest
import torch

from slimtune import api
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.quant import quant_linears

FAMILIES = ["llama", "gemma3", "bert"]
CAUSAL = ["llama", "gemma3"]
TRAIN = dict(max_steps=3, batch_size=4, grad_accum=1, learning_rate=2e-2, warmup_steps=0, save_steps=50,
             max_length=64, seed=3, progress=False)


@pytest.fixture(scope="module")
def bases(request, tmp_path_factory, news_snippet, tiny_llama_dir, tiny_gemma3_dir, tiny_bert_dir):
    """family -> (dense dir, sparse dir, sparse-INT4 dir)."""
    cal = {"source": news_snippet, "n_samples": 4, "seq_len": 32, "seed": 0}
    out = {}
    for family, dense in (("llama", tiny_llama_dir), ("gemma3", tiny_gemma3_dir), ("bert", tiny_bert_dir)):
        root = tmp_path_factory.mktemp(family)
        sparse = api.sparsify(dense, out=root / "sparse", method="wanda", sparsity=0.5, calibration=cal,
                              progress=False)
        int4 = api.quantize(sparse, out=root / "sparse-int4", method="gptq", bits=4, group_size=16,
                            symmetric=False, calibration=cal, progress=False)
        out[family] = (dense, sparse, int4)
    return out


def _zero_fraction(net, prefix):
    ws = [m.weight for n, m in net.named_modules() if n.startswith(prefix) and hasattr(m, "weight")
          and m.weight is not None and m.weight.dim() == 2]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_int4_base_reloads_sparse_and_quantized(bases, family):
    _, sparse, int4 = bases[family]
    net, _ = load_model(int4)  # a quantized encoder reloads too (AutoModel, not a causal LM)
    q = quant_linears(net)
    blocks = "encoder.layer" if family == "bert" else "model.layers"
    assert q and all(n.startswith(blocks) for n in q)
    assert {p.bits for p in (m.params for m in q.values())} == {4}
    assert _zero_fraction(net, blocks) >= 0.49  # zeros kept through GPTQ
    if family == "bert":
        assert "pooler.dense" not in q
        assert (net.pooler.dense.weight != 0).all()  # every method leaves the pooler dense


@pytest.mark.parametrize("family", CAUSAL)
def test_sqft_pipeline_end_to_end(bases, family, tmp_path):
    _, sparse, int4 = bases[family]
    ad = api.finetune(int4, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[8, 4],
                      sparse_adapter=True, quant_aware=True, **TRAIN)
    groups = json.loads((ad / "elastic_config.json").read_text())["groups"]
    assert {g.split(":")[1] for g in groups} == {"qkv", "o_proj", "gate_up", "down"}
    sub = api.extract(ad, out=tmp_path / "sub", select="median")
    merged = api.merge(sub, out=tmp_path / "merged")

    adapted, tok = api.load_adapted(int4, sub)
    merged_net, _ = load_model(merged)
    ids = tok("the market fell sharply on monday", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (merged_net(ids).logits - adapted(ids).logits).abs().max() <= 1e-4
    base_q, merged_q = quant_linears(load_model(int4)[0]), quant_linears(merged_net)
    assert set(base_q) == set(merged_q)
    assert all(merged_q[n].params.to_bytes() == q.params.to_bytes() for n, q in base_q.items())
    assert _zero_fraction(merged_net, "model.layers") >= 0.49

    r = api.evaluate(merged, task="polarity", limit=8, perplexity_text="news", seq_len=32, max_windows=2,
                     progress=False)
    assert r["n"] == 8 and 0 <= r["acc"] <= 1 and r["perplexity"] > 1
    assert r["split_seed"] == 0 and set(r["split_sizes"]) == {"train", "validation", "test"}
    assert r["perplexity_base_model"] == str(int4)
    assert r["perplexity_ratio"] == pytest.approx(r["perplexity"] / r["perplexity_base"])


@pytest.mark.parametrize("stage", ["evaluate", "perplexity"])
def test_encoder_is_refused_by_the_stages_that_score_text(bases, stage, tmp_path):
    dense, _, int4 = bases["bert"]
    calls = {"evaluate": lambda: api.evaluate(int4, task="polarity", limit=4, progress=False),
             "perplexity": lambda: api.evaluate(dense, task=None, perplexity_text="news", progress=False)}
    with pytest.raises(ConfigError, match=f"{stage if stage != 'perplexity' else 'evaluate'} needs a causal "
                                          r"language model, but this is an encoder without an LM head \(bert\)"):
        calls[stage]()
    assert not (tmp_path / "ad").exists()


def test_lonas_on_gemma3_extracts_the_active_sub_network(tiny_gemma3_dir, tmp_path):
    """LoNAS through the architecture map: finetune -> extract (per-block widths) -> merge on Gemma-3."""
    from slimtune.nas import ElasticSpace
    from slimtune.widths_io import WIDTHS_FILE

    sup = api.finetune(tiny_gemma3_dir, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       widths=["mlp", "heads"], width_order="magnitude", sampler="sandwich", dropout=0.0, **TRAIN)
    space = ElasticSpace.load(sup)
    assert {n for n, d in space.dimensions.items() if d.kind == "width"} == {
        f"model.layers.{i}:{k}" for i in range(4) for k in ("mlp", "heads")}
    config = {**space.median(), "model.layers.0:mlp": 112, "model.layers.2:heads": 1, "model.layers.3:mlp": 64}
    sub = api.extract(sup, out=tmp_path / "sub", select=config)
    merged = api.merge(sub, out=tmp_path / "merged")
    assert (merged / WIDTHS_FILE).is_file()
    small, tok = load_model(merged)
    reference, _ = api.load_adapted(tiny_gemma3_dir, sup)
    reference.eval()
    space.apply(reference, config)
    ids = tok("the market fell sharply on monday as traders sold shares of the largest banks",
              return_tensors="pt")["input_ids"]  # longer than the sliding window (8)
    with torch.no_grad():
        diff = (small(ids).logits - reference(ids).logits).abs().max().item()
    assert diff <= 1e-5
    assert sum(p.numel() for p in small.parameters()) == space.size(load_model(tiny_gemma3_dir)[0], config)
    parent, child = api.inspect(tiny_gemma3_dir)["costs"], api.inspect(merged)["costs"]
    assert child["macs_per_token"] < parent["macs_per_token"] and child["block_widths"][2]["kv_heads"] == 1
