"""LoNAS: elastic base widths with elastic adapters, trained, searched, extracted into a smaller model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimtune import api
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.nas import ElasticSpace
from slimtune.nas.lonas import SUBNETWORK_FILE, head_fractions, linear_macs, width_dimensions
from slimtune.nas.reorder import ORDER_FILE, magnitude_scores, reorder
from slimtune.widths_io import WIDTHS_FILE

IDS = torch.tensor([[1, 17, 240, 31, 77, 5, 300, 12, 9, 64, 101, 3]])
TRAIN = dict(max_steps=3, batch_size=4, learning_rate=2e-2, warmup_steps=0, save_steps=50, max_length=64, seed=3,
             progress=False)


def _logits(net):
    with torch.no_grad():
        return net(input_ids=IDS).logits


@pytest.fixture(scope="module")
def supernet(tiny_llama_dir, tmp_path_factory):
    return api.finetune(tiny_llama_dir, task="polarity", out=tmp_path_factory.mktemp("lonas") / "super", adapter="nls",
                        rank_space=[4, 3, 2], widths=["mlp", "heads"], width_order="magnitude", sampler="sandwich",
                        dropout=0.0, **TRAIN)


def test_presets_and_importance_order_keep_the_function(tiny_llama_dir):
    net, _ = load_model(tiny_llama_dir)
    assert head_fractions(net) == [1.0, 0.5]  # 2 KV groups: all, then one
    dims = width_dimensions(net, ["mlp", "heads"])
    assert dims[0].choices == [128, 112, 96, 80, 64] and dims[-1].choices == [2, 1]
    before = _logits(net)
    orders = reorder(net, dims, "magnitude")
    torch.testing.assert_close(_logits(net), before, rtol=0, atol=1e-5)
    for d in dims:  # the kept prefix is now the largest-norm units
        scores = magnitude_scores(net, d)
        assert torch.all(scores[:-1] >= scores[1:]) and sorted(orders[d.name]) == list(range(len(scores)))
    assert reorder(net, dims, "original") == {}
    with pytest.raises(ConfigError, match="unknown width kind"):
        width_dimensions(net, ["ffn"])


def test_width_options_are_checked_before_work(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="adapter nls"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", widths=["mlp"], **TRAIN)
    with pytest.raises(ConfigError, match="need widths"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="nls", mlp_fractions=[1, 0.5], **TRAIN)
    rtn = api.quantize(tiny_llama_dir, out=tmp_path / "q", method="rtn", group_size=32, progress=False)
    with pytest.raises(ConfigError, match=f"quantized \\(it was quantized from {tiny_llama_dir}\\).*slimtune quantize"):
        api.finetune(rtn, out=tmp_path / "x", adapter="nls", widths=["mlp"], **TRAIN)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.checkpoints").exists()  # refused before training
    net, _ = load_model(rtn)  # in memory too: the width dimensions refuse a QuantLinear base
    with pytest.raises(ConfigError, match="group boundaries"):
        width_dimensions(net, ["mlp"])


def test_supernetwork_holds_rank_and_width_dimensions(supernet):
    space = ElasticSpace.load(supernet)
    kinds = {n: d.kind for n, d in space.dimensions.items()}
    assert {k for k in kinds.values()} == {"rank", "width"}
    assert "model.layers.0:mlp" in kinds and "model.layers.1:heads" in kinds
    assert (supernet / ORDER_FILE).is_file()
    manifest = json.loads((supernet / "slimtune.json").read_text())
    assert manifest["method"] == "lonas"
    assert manifest["metrics"]["width_dimensions"] == 4
    assert manifest["metrics"]["minimal_parameters"] < manifest["metrics"]["maximal_parameters"]
    history = json.loads((supernet / "elastic_history.json").read_text())
    assert len(history) == 3 * 3  # sandwich: maximal, random, minimal per step


def _super_at(tiny_llama_dir, supernet, config):
    net, _ = api.load_adapted(tiny_llama_dir, supernet)
    net.eval()
    ElasticSpace.load(supernet).apply(net, config)
    return net


def test_search_extract_merge_gives_a_smaller_model_with_the_same_logits(tiny_llama_dir, supernet, tmp_path):
    search = api.search(supernet, out=tmp_path / "search", trials=5, limit=4, population=4,
                        objectives=["accuracy", "total_params", "macs"], progress=False)
    records = [json.loads(line) for line in (search / "trials.jsonl").read_text().splitlines()]
    assert records[0]["objectives"]["total_params"] > records[2]["objectives"]["total_params"]  # maximal > minimal
    assert records[0]["objectives"]["macs"] > records[2]["objectives"]["macs"]
    space = ElasticSpace.load(supernet)
    # per-block widths (not uniform): slimtune's loader rebuilds them
    mixed = {**space.median(), "model.layers.0:mlp": 112, "model.layers.1:mlp": 64, "model.layers.0:heads": 1}
    sub = api.extract(supernet, out=tmp_path / "sub", select=mixed)
    assert (sub / SUBNETWORK_FILE).is_file() and (sub / ORDER_FILE).is_file()
    metrics = json.loads((sub / "slimtune.json").read_text())["metrics"]
    assert metrics["total_parameters"] < metrics["maximal_total_parameters"]
    merged = api.merge(sub, out=tmp_path / "merged")
    assert (merged / WIDTHS_FILE).is_file()
    small, _ = load_model(merged)
    reference = _super_at(tiny_llama_dir, supernet, mixed)
    n_small = sum(p.numel() for p in small.parameters())
    base = load_model(tiny_llama_dir)[0]
    assert n_small == space.size(base, mixed) < metrics["total_parameters"]  # the sub-network's base, merged
    assert n_small < 0.9 * sum(p.numel() for p in base.parameters())
    torch.testing.assert_close(_logits(small), _logits(reference), rtol=0, atol=1e-5)
    adapted, _ = api.load_adapted(tiny_llama_dir, sub)  # the sub-adapter alone computes the same sub-network
    torch.testing.assert_close(_logits(adapted.eval()), _logits(reference), rtol=0, atol=1e-5)
    assert linear_macs(reference, space, mixed) < linear_macs(reference, space, space.maximal())
    # inspect: the extracted model costs less than its parent, per block as recorded
    parent, child = api.inspect(tiny_llama_dir)["costs"], api.inspect(merged)["costs"]
    assert child["parameters"] == n_small < parent["parameters"]
    assert child["macs_per_token"] < parent["macs_per_token"]
    assert child["linear_macs_per_token"] == linear_macs(reference, space, mixed) == metrics["macs_per_token"]
    assert child["widths"] is None and child["block_widths"][0]["intermediate"] == 112
    assert child["block_widths"][1]["intermediate"] == 64 and child["block_widths"][0]["kv_heads"] == 1
    # the merged model inherits the lineage: evaluation on the held-out test split runs
    result = api.evaluate(merged, task="polarity", limit=4, progress=False, drift=False)
    assert result["n"] == 4


def test_a_sub_network_is_not_applied_to_a_quantized_base(tiny_llama_dir, supernet, tmp_path):
    sub = api.extract(supernet, out=tmp_path / "median", select="median")
    rtn = api.quantize(tiny_llama_dir, out=tmp_path / "q", method="rtn", group_size=32, progress=False)
    with pytest.raises(ConfigError, match="quantized base cannot take a LoNAS"):  # its channel order
        api.merge(sub, out=tmp_path / "merged", model=rtn)
    (sub / ORDER_FILE).unlink()  # without an order: the widths themselves are refused
    with pytest.raises(ConfigError, match="elastic widths \\(LoNAS\\) need a float base"):
        api.load_adapted(rtn, sub)
    assert not (tmp_path / "merged").exists()


def test_median_from_search_merges_into_a_stock_transformers_model(tiny_llama_dir, supernet, tmp_path):
    sub = api.extract(supernet, out=tmp_path / "median", select="median")
    merged = api.merge(sub, out=tmp_path / "merged")
    assert not (merged / WIDTHS_FILE).exists()  # uniform widths: the config describes them
    config = json.loads((merged / "config.json").read_text())
    assert config["intermediate_size"] == 96 and config["num_key_value_heads"] == 2
    stock = AutoModelForCausalLM.from_pretrained(merged).eval()
    reference = _super_at(tiny_llama_dir, supernet, ElasticSpace.load(supernet).median())
    torch.testing.assert_close(_logits(stock), _logits(reference), rtol=0, atol=1e-5)


def _zeros_kept(parent, child) -> int:
    """Every zero of the parent's weights (sliced to the child's shapes) is a zero of the child's; the count."""
    from slimtune.adapters.base import AdapterLayer
    from slimtune.nas.cost import linear_modules

    kept = 0
    small = linear_modules(child)
    for name, m in linear_modules(parent).items():
        if "layers" not in name:
            continue
        w = (m.base_layer if isinstance(m, AdapterLayer) else m).weight
        c = small[name].weight
        zero = w[:c.shape[0], :c.shape[1]] == 0
        assert torch.all(c[zero] == 0), f"{name}: a zero of the sparse base was filled"
        kept += int(zero.sum())
    return kept


def test_sparse_base_keeps_its_zeros_through_widths_extraction_and_merge(tiny_llama_dir, tmp_path):
    sparse = api.sparsify(tiny_llama_dir, out=tmp_path / "sparse", method="magnitude", sparsity=0.5, progress=False)
    sup = api.finetune(sparse, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       widths=["mlp", "heads"], width_order="magnitude", sparse_adapter=True, **TRAIN)
    space = ElasticSpace.load(sup)
    mixed = {**space.minimal(), "model.layers.0:mlp": 112}
    sub = api.extract(sup, out=tmp_path / "sub", select=mixed)
    merged = api.merge(sub, out=tmp_path / "merged")
    small, _ = load_model(merged)
    adapted, _ = api.load_adapted(sparse, sub)  # the sparse base, reordered as in training, with the sub-adapter
    adapted.eval()
    kept = _zeros_kept(adapted, small)
    assert kept >= 0.49 * sum(p.numel() for n, p in small.named_parameters() if "layers" in n and p.dim() == 2)
    torch.testing.assert_close(_logits(small), _logits(adapted), rtol=0, atol=1e-5)
    assert api.inspect(merged)["total"]["sparsity"] >= 0.49
