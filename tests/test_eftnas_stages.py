"""EFTNAS stages: importance (passes, encoders and decoders), space (reordered model + budgets), the CLI."""

import json

import pytest
import torch

from slimtune import api
from slimtune.cli import main
from slimtune.models import load_model
from slimtune.nas import SearchSpace
from slimtune.nas.importance import Importance

FAST = dict(max_steps=2, batch_size=8, max_length=48, warmup_steps=0, logging_steps=1, save_steps=100)


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eftnas") / "teacher"
    return api.finetune(tiny_bert_dir, out=out, task="polarity", adapter="full", importance=True, progress=False,
                        **FAST)


def _logits(path, texts):
    net, tok = load_model(path)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_space_stage_reorders_and_meets_budgets(teacher, tmp_path):
    out, result = api.space(teacher, out=tmp_path / "space", budgets=4, min_fraction=0.4, metric="macs")
    for r in result["budgets"]:
        assert abs(r["relative_error"]) <= 0.01
    texts = ["a fine film", "dull and long, the worst of the year"]
    assert (_logits(out, texts) - _logits(teacher, texts)).abs().max() <= 1e-5
    imp = Importance.load(out)
    assert all(torch.all(s[:-1] >= s[1:]) for s in imp.scores.values())
    space = SearchSpace.load(out)
    assert {n: d.choices for n, d in space.dimensions.items()} == result["space"]
    assert json.loads((out / "eftnas_space.json").read_text())["budgets"][0]["fraction"] == 1.0
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["stage"] == "space" and any(r["use"] == "train" for r in manifest["lineage"])
    with pytest.raises(Exception, match="(?i)train"):
        api.evaluate(out, task="polarity", split="train", progress=False)


def test_importance_stage_classifier_and_decoder(teacher, tiny_llama_dir, tmp_path):
    out = api.importance(teacher, out=tmp_path / "imp", limit=16, batch_size=8)
    imp = Importance.load(out)
    assert imp.steps == 2 and "bert.encoder.layer.1:mlp" in imp.scores
    main(["importance", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "llama-imp"), "--task", "polarity",
          "--limit", "8", "--batch-size", "4"])
    imp = Importance.load(tmp_path / "llama-imp")
    assert set(imp.scores) == {"model.layers.0:heads", "model.layers.1:heads", "model.layers.0:mlp",
                               "model.layers.1:mlp"}


def test_space_cli_on_decoder(tiny_llama_dir, tmp_path, capsys):
    main(["importance", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "imp"), "--task", "polarity",
          "--limit", "8"])
    main(["space", "--model", str(tiny_llama_dir), "--importance", str(tmp_path / "imp"), "--out",
          str(tmp_path / "space"), "--budgets", "3", "--min-fraction", "0.7", "--metric", "params"])
    printed = capsys.readouterr().out
    assert "budget 0.700" in printed and "model.layers.0:mlp" in printed
    texts = ["the news today"]
    assert (_logits(tmp_path / "space", texts) - _logits(tiny_llama_dir, texts)).abs().max() <= 1e-5


def test_supernet_sandwich_distillation_and_extraction(teacher, tmp_path):
    from slimtune.classify.supernet import check_savable, extract_classifier, train_supernet
    from slimtune.data.registry import load_task
    from slimtune.errors import ConfigError
    from slimtune.nas.importance import space_from_widths
    from slimtune.train import TrainConfig

    space_dir, _ = api.space(teacher, out=tmp_path / "space", budgets=3, min_fraction=0.5)
    cfg = TrainConfig(**{**FAST, "learning_rate": 5e-5, "max_steps": 2})
    net, tok, space, metrics = train_supernet(space_dir, teacher, load_task("polarity"), cfg, tmp_path / "ck")
    history = metrics["sampled"]
    assert len(history) == 6 and history[0]["config"] == space.maximal() and history[2]["config"] == space.minimal()
    assert all(h["loss"] > 0 for h in history)
    enc = tok(["a fine film", "dull and long"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    uniform = space_from_widths(net, {n: [d.choices[0], 64] if n.endswith(":mlp") else [d.choices[0]]
                                      for n, d in space.dimensions.items()})
    config = {n: 64 for n in uniform.dimensions if n.endswith(":mlp")}
    sub = extract_classifier(net, uniform, config)
    uniform.apply(net, config)
    with torch.no_grad():
        expected, got = net(**batch).logits, sub(**batch).logits
    assert (expected - got).abs().max() <= 1e-5
    check_savable(sub)
    sub.save_pretrained(tmp_path / "sub")
    tok.save_pretrained(tmp_path / "sub")
    back, _ = load_model(tmp_path / "sub")
    assert back.config.intermediate_size == 64
    with torch.no_grad():
        assert (back(**batch).logits - expected).abs().max() <= 1e-5
    smaller = extract_classifier(net, space, space.minimal())  # heads dropped: in memory only
    space.apply(net, space.minimal())
    with torch.no_grad():
        assert (smaller(**batch).logits - net(**batch).logits).abs().max() <= 1e-5
    if any(d.choices[-1] < d.choices[0] for n, d in space.dimensions.items() if n.endswith(":heads")):
        with pytest.raises(ConfigError, match="heads"):
            check_savable(smaller)
