"""EFTNAS layer skipping: `space --skip` gives skip candidates a choice 0 (the layer's attention or MLP
skipped), the super-network trains and measures it, `extract` writes empty sub-blocks that slimtune's loader
rebuilds, with the super-network's logits (<= 1e-5) and exactly the parameters / MACs the cost model counts;
a decoder with a skipped attention still generates correctly with its KV cache."""

import json
from pathlib import Path

import pytest
import torch

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.nas import SearchSpace
from slimtune.nas.cost import model_costs
from slimtune.nas.elastic import Binding, Dimension, WidthLinear, set_axis
from slimtune.nas.elastic_model import cost_functions
from slimtune.skipping import SkippableAttention
from slimtune.widths_io import WIDTHS_FILE

FAST = dict(max_steps=2, batch_size=8, max_length=48, warmup_steps=0, logging_steps=1, save_steps=100)
TEXTS = ["a fine film, warm and funny", "dull and long, the worst of the year", "it is a movie"]


def _manifest(path):
    return json.loads((Path(path) / "slimtune.json").read_text())


@pytest.fixture(scope="module")
def llama_super(tiny_llama_dir, tmp_path_factory):
    """importance -> space --skip (every dimension a skip candidate: skip_fraction 1) -> supernet."""
    root = tmp_path_factory.mktemp("skip-llama")
    imp = api.importance(tiny_llama_dir, out=root / "imp", task="polarity", limit=8, batch_size=4)
    assert main(["space", "--model", str(tiny_llama_dir), "--importance", str(imp), "--out", str(root / "space"),
                 "--budgets", "2", "--min-fraction", "0.6", "--skip", "--skip-fraction", "1"]) == 0
    sup = api.supernet(root / "space", out=root / "super", task="polarity", teacher=tiny_llama_dir, progress=False,
                       **FAST)
    return root, sup


@pytest.fixture(scope="module")
def bert_super(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("skip-bert")
    teacher = api.finetune(tiny_bert_dir, out=root / "teacher", task="polarity", adapter="full", importance=True,
                           progress=False, **FAST)
    space, result = api.space(teacher, out=root / "space", budgets=2, min_fraction=0.5, skip=True, skip_fraction=1.0)
    sup = api.supernet(space, out=root / "super", progress=False, **FAST)
    return root, sup, result


def test_space_adds_zero_to_skip_candidates_only_when_asked(llama_super, tiny_llama_dir, tmp_path):
    root, sup = llama_super
    m = _manifest(root / "space")
    assert m["config"]["skip"] is True and m["metrics"]["skippable"] == 4
    space = SearchSpace.load(sup)
    assert all(d.choices[-1] == 0 and d.choices[0] > 0 for d in space.dimensions.values())
    assert space.minimal() == {n: 0 for n in space.dimensions}
    history = json.loads((sup / "elastic_history.json").read_text())
    assert history[2]["config"] == space.minimal()  # the sandwich's smallest: everything skipped
    out, result = api.space(tiny_llama_dir, importance=root / "imp", out=tmp_path / "plain", budgets=2,
                            min_fraction=0.6, skip_fraction=1.0)  # off by default: reported, not searched
    assert result["skip_candidates"] == m["metrics"]["skip_candidates"] and result["skip"] is False
    assert all(0 not in c for c in result["space"].values())
    json_space = json.loads((out / "eftnas_space.json").read_text())
    assert json_space["skip_candidates"] and json_space["skip"] is False


@pytest.mark.parametrize("config", [
    {"model.layers.0:heads": 0, "model.layers.1:mlp": 0},
    {"model.layers.1:heads": 0, "model.layers.1:mlp": 0},  # a whole layer: both sub-blocks empty
])
def test_llama_extract_with_skipped_sub_blocks(llama_super, tmp_path, config):
    _, sup = llama_super
    out = api.extract(sup, out=tmp_path / "sub", select=config)
    widths = json.loads((out / WIDTHS_FILE).read_text())
    layer = next(n for n, c in config.items() if n.endswith(":heads")).split(":")[0]
    assert widths["shapes"][f"{layer}.self_attn.q_proj"] == [0, 64] and widths["heads"][f"{layer}.self_attn.q_proj"] == 0
    assert widths["shapes"]["model.layers.1.mlp.down_proj"] == [64, 0]
    small, tok = load_model(out)
    assert small.config.num_hidden_layers == 2  # the layer stays (skipping.py says why)
    assert isinstance(small.get_submodule(f"{layer}.self_attn"), SkippableAttention)
    net, _ = load_model(sup)
    space = SearchSpace.load(sup)
    space.apply(net, config)
    ids = tok(["the news today was", "a long sentence about many things"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (small(**ids).logits - net(**ids).logits).abs().max() <= 1e-5
    m = _manifest(out)["metrics"]
    costs, measured = cost_functions(net, space, 128), model_costs(small, 128)
    assert sum(p.numel() for p in small.parameters()) == m["parameters"] == costs["params"](config) < m["full_parameters"]
    assert measured["macs_per_token"] == m["macs"] == costs["macs"](config) < m["full_macs"]
    prompt = tok(["the news today was"], return_tensors="pt")
    with torch.no_grad():  # the KV cache of a layer without heads still counts its positions
        cached = small.generate(**prompt, max_new_tokens=5, do_sample=False, output_scores=True,
                                return_dict_in_generate=True)
        full = small.generate(**prompt, max_new_tokens=5, do_sample=False, output_scores=True,
                              return_dict_in_generate=True, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.scores, full.scores)) <= 1e-5


def test_search_measures_skipped_configurations(llama_super, tmp_path):
    _, sup = llama_super
    out = api.search(sup, out=tmp_path / "search", objectives=["loss", "macs"], trials=4, limit=4, progress=False)
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    space = SearchSpace.load(sup)
    minimal = next(t for t in trials if t["heuristic"] == "minimal")  # every sub-block skipped: the LM head remains
    assert minimal["config"] == space.minimal() and minimal["objectives"]["macs"] == 64 * 512
    assert min(t["objectives"]["macs"] for t in trials) == minimal["objectives"]["macs"]
    assert all(torch.isfinite(torch.tensor(t["objectives"]["loss"])) for t in trials)


def test_bert_extract_keeps_the_output_bias_of_a_skipped_attention(bert_super, tmp_path):
    _, sup, result = bert_super
    layers = "bert.encoder.layer"
    assert set(result["skip_candidates"]) == set(result["space"]) and all(c[-1] == 0 for c in result["space"].values())
    config = {f"{layers}.0:heads": 0, f"{layers}.1:mlp": 0, f"{layers}.1:heads": 0}
    out = api.extract(sup, out=tmp_path / "sub", select=config)
    small, tok = load_model(out)
    dense = small.get_submodule(f"{layers}.0.attention.output.dense")
    assert tuple(dense.weight.shape) == (64, 0) and dense.bias.abs().sum() > 0  # the empty sum plus the bias
    assert small.get_submodule(f"{layers}.1.output.dense").weight.shape[1] == 0
    net, _ = load_model(sup)
    space = SearchSpace.load(sup)
    space.apply(net, config)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        expected = net(**batch).logits
        assert (small(**batch).logits - expected).abs().max() <= 1e-5
    costs = cost_functions(net, space, 128)
    assert sum(p.numel() for p in small.parameters()) == costs["params"](config) == _manifest(out)["metrics"]["parameters"]
    assert model_costs(small, 128)["macs_per_token"] == costs["macs"](config)
    assert api.evaluate(out, task="polarity", split="test", limit=10, progress=False)["n"] == 10


def test_width_zero_slices_and_choices():
    lin = torch.nn.Linear(4, 3)
    set_axis(lin, "out", 0)
    assert isinstance(lin, WidthLinear) and lin(torch.ones(2, 4)).shape == (2, 0)
    set_axis(lin, "out", 3)
    set_axis(lin, "in", 0)
    assert torch.equal(lin(torch.ones(2, 0)), lin.bias.detach().expand(2, 3))  # the empty sum plus the bias
    with pytest.raises(ConfigError, match="strictly descending"):
        Dimension("x:mlp", [4, 0, 2], [Binding("m", "out")])
    with pytest.raises(ConfigError, match="the last may be 0"):
        Dimension("x:mlp", [0], [Binding("m", "out")])
