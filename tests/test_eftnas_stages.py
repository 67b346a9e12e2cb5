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
