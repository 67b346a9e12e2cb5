"""LoNAS on encoder classifiers: `finetune --adapter nls --widths mlp,heads` on a tiny BERT (elastic ranks, BERT's
intermediate channels and attention heads, the head trained beside them), then search, extract and merge into a
physically smaller classifier that reloads with the super-network's logits (≤ 1e-5), and the refusals."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from slimtune import api
from slimtune.adapters.peft_io import BASE_MODEL_DIR, base_of_adapter
from slimtune.classify import load_classifier
from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.nas import ElasticSpace
from slimtune.widths_io import WIDTHS_FILE

LAYERS = "bert.encoder.layer"
TEXTS = ["a fine film, warm and funny", "dull and long, the worst of the year", "it is a movie"]
TRAIN = ["--max-steps", "3", "--batch-size", "8", "--max-length", "48", "--warmup-steps", "0", "--save-steps", "100",
         "--learning-rate", "1e-2", "--seed", "3"]


@pytest.fixture(scope="module")
def supernet(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lonas-bert") / "super"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--task", "polarity", "--out", str(out), "--adapter", "nls",
                 "--rank-space", "4,2", "--widths", "mlp,heads", "--sampler", "sandwich", "--dropout", "0",
                 "--width-order", "magnitude", *TRAIN]) == 0
    return out


def _logits(net, tok):
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def _super_at(supernet, config):
    net, tok = api.load_adapted(base_of_adapter(supernet), supernet)
    net.eval()
    ElasticSpace.load(supernet).apply(net, config)
    return net, tok


def test_super_network_of_ranks_mlp_channels_and_heads(tiny_bert_dir, supernet):
    manifest = json.loads((supernet / "slimtune.json").read_text())
    assert manifest["method"] == "lonas-classifier" and manifest["config"]["rank_space"] == [4, 2]
    assert manifest["metrics"]["width_dimensions"] == 4 and manifest["metrics"]["rank_groups"] > 0
    assert manifest["metrics"]["minimal_parameters"] < manifest["metrics"]["maximal_parameters"]
    space = ElasticSpace.load(supernet)
    assert space.dimensions[f"{LAYERS}.0:mlp"].choices == [128, 112, 96, 80, 64]
    assert space.dimensions[f"{LAYERS}.1:heads"].choices == [4, 3, 2]
    mlp = {(b.module.rsplit(".", 2)[-2], b.axis) for b in space.dimensions[f"{LAYERS}.0:mlp"].bindings}
    assert mlp == {("intermediate", "out"), ("output", "in")}
    heads = {(b.module.split("attention.")[1], b.axis, b.unit) for b in space.dimensions[f"{LAYERS}.0:heads"].bindings}
    assert heads == {("self.query", "out", 16), ("self.key", "out", 16), ("self.value", "out", 16),
                     ("output.dense", "in", 16)}
    assert len(json.loads((supernet / "elastic_history.json").read_text())) == 3 * 3  # sandwich, 3 steps
    base = supernet / BASE_MODEL_DIR
    assert base_of_adapter(supernet) == str(base)
    head, _ = load_classifier(base)  # the base classifier: the frozen encoder and the head trained beside the adapter
    fresh, _ = load_classifier(tiny_bert_dir, ("negative", "positive"), seed=3)
    assert not torch.equal(head.classifier.weight, fresh.classifier.weight)
    assert not any("lora" in n for n, _ in head.named_parameters())


def test_search_extract_merge_gives_a_smaller_classifier_with_the_same_logits(tiny_bert_dir, supernet, tmp_path):
    search = api.search(supernet, out=tmp_path / "search", trials=4, limit=8, population=2,
                        objectives=["accuracy", "total_params", "macs", "latency_prefill"], latency_seq_len=16,
                        latency_repeats=1, progress=False)
    records = [json.loads(line) for line in (search / "trials.jsonl").read_text().splitlines()]
    assert records[0]["objectives"]["total_params"] > records[2]["objectives"]["total_params"]  # maximal > minimal
    assert records[0]["objectives"]["macs"] > records[2]["objectives"]["macs"]
    assert all(0 < r["objectives"]["latency_prefill"] < float("inf") for r in records)
    space = ElasticSpace.load(supernet)
    full = sum(p.numel() for p in load_classifier(supernet / BASE_MODEL_DIR)[0].parameters())
    mixed = {**space.median(), f"{LAYERS}.0:mlp": 112, f"{LAYERS}.1:mlp": 64, f"{LAYERS}.0:heads": 2,
             f"{LAYERS}.1:heads": 3}
    uniform_heads = {**space.minimal(), f"{LAYERS}.0:mlp": 96, f"{LAYERS}.1:mlp": 96}
    for name, config in (("mixed", mixed), ("uniform-heads", uniform_heads)):
        sub = api.extract(supernet, out=tmp_path / f"sub-{name}", select=config)
        merged = api.merge(sub, out=tmp_path / f"merged-{name}")
        widths = json.loads((merged / WIDTHS_FILE).read_text())  # fewer BERT heads: shapes and heads recorded
        heads = {f"{LAYERS}.{i}.attention.self.query": config[f"{LAYERS}.{i}:heads"] for i in (0, 1)}
        assert widths["heads"] == heads
        small, tok = load_model(merged)
        reference, _ = _super_at(supernet, config)
        torch.testing.assert_close(_logits(small, tok), _logits(reference, tok), rtol=0, atol=1e-5)
        n_small = sum(p.numel() for p in small.parameters())
        assert n_small == space.size(load_model(supernet / BASE_MODEL_DIR)[0], config) < full
        small2, _ = load_classifier(merged)  # the classifier loader rebuilds it too
        torch.testing.assert_close(_logits(small2, tok), _logits(reference, tok), rtol=0, atol=1e-5)
        adapted, _ = api.load_adapted(base_of_adapter(sub), sub)  # the sub-adapter alone: the same sub-network
        torch.testing.assert_close(_logits(adapted.eval(), tok), _logits(reference, tok), rtol=0, atol=1e-5)
    costs = api.inspect(merged)["costs"]  # inspect counts the smaller classifier's parameters and MACs
    assert costs["parameters"] == n_small and costs["widths"] == {"intermediate": 96, "heads": 2, "kv_heads": 2}
    assert api.evaluate(merged, task="polarity", progress=False)["n"] == 50  # held out: the test split


def test_uniform_mlp_with_every_head_merges_into_a_stock_classifier(supernet, tmp_path):
    config = {f"{LAYERS}.0:mlp": 80, f"{LAYERS}.1:mlp": 80}
    merged = api.merge(api.extract(supernet, out=tmp_path / "sub", select=config), out=tmp_path / "merged")
    assert not (merged / WIDTHS_FILE).exists()
    stock = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert stock.config.intermediate_size == 80
    reference, tok = _super_at(supernet, config)
    torch.testing.assert_close(_logits(stock, tok), _logits(reference, tok), rtol=0, atol=1e-5)


def test_bad_encoder_widths_input_is_refused_before_work(tiny_bert_dir, supernet, tmp_path):
    from transformers import DistilBertConfig

    other = tmp_path / "distil"
    DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(other)
    with pytest.raises(ConfigError, match="architecture map, which has no 'distilbert' \\(encoders: bert, roberta\\)"):
        api.finetune(other, out=tmp_path / "x", task="polarity", adapter="nls", widths=["mlp"], progress=False)
    with pytest.raises(ConfigError, match="widths.0.: Input should be 'mlp' or 'heads'"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="nls", widths=["ffn"])
    with pytest.raises(ConfigError, match="leave no elastic width"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="nls", widths=["heads"],
                     head_fractions=[1.0], progress=False, max_steps=1)
    with pytest.raises(ConfigError, match="importance scores come from full fine-tuning"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="nls", importance=True)
    with pytest.raises(ConfigError, match="loss is a causal LM's completion loss"):
        api.search(supernet, out=tmp_path / "s", objectives=["loss", "total_params"], trials=2)
    with pytest.raises(ConfigError, match="latency_decode times greedy decoding"):
        api.search(supernet, out=tmp_path / "s", objectives=["accuracy", "latency_decode"], trials=2)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.checkpoints").exists()
    assert not (tmp_path / "s").exists()


def test_rank_only_nls_on_an_encoder_extracts_a_peft_adapter(tiny_bert_dir, tmp_path):
    from peft import PeftModel

    sup = api.finetune(tiny_bert_dir, out=tmp_path / "nls", task="polarity", adapter="nls", rank_space=[4, 2],
                       dropout=0.0, max_steps=2, batch_size=8, max_length=48, warmup_steps=0, save_steps=100,
                       learning_rate=1e-2, progress=False)
    assert json.loads((sup / "slimtune.json").read_text())["method"] == "nls-classifier"
    sub = api.extract(sup, out=tmp_path / "sub", select="minimal")
    merged = api.merge(sub, out=tmp_path / "merged")
    reference, tok = _super_at(sup, ElasticSpace.load(sup).minimal())
    small, _ = load_model(merged)
    torch.testing.assert_close(_logits(small, tok), _logits(reference, tok), rtol=0, atol=1e-5)
    base = AutoModelForSequenceClassification.from_pretrained(sup / BASE_MODEL_DIR)
    peft = PeftModel.from_pretrained(base, sub).eval()  # stock PEFT on the base classifier: the same function
    torch.testing.assert_close(_logits(peft, tok), _logits(reference, tok), rtol=0, atol=1e-5)
