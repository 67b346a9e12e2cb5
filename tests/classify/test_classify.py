"""Encoder classification: the classification view of tasks, finetune (full, LoRA) of a tiny BERT with a
head, evaluate's accuracy with intervals, the artifact's reload and its held-out lineage."""

import json

import pytest
import torch

from slimtune import api
from slimtune.classify import classification_view, load_classifier
from slimtune.data.registry import load_task
from slimtune.data.tasks import Example, Task
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.train import distillation_loss

FAST = dict(max_steps=4, batch_size=8, max_length=48, warmup_steps=0, logging_steps=1, save_steps=100)


def test_polarity_view():
    view = classification_view(load_task("polarity"))
    assert view.labels == ("negative", "positive")
    ex = view.split("test")[0]
    assert view.label_id(ex) == ex.label


def test_views_refused_or_reordered():
    gen = Task("g", "generation", [Example("p", answer="a")], [], [], score=lambda p, e: 1.0)
    with pytest.raises(ConfigError, match="generation"):
        classification_view(gen)
    mixed = Task("m", "multiple_choice", [Example("a", ("x", "y"), 0), Example("b", ("z", "w"), 1)], [], [])
    with pytest.raises(ConfigError, match="2 different choice sets"):
        classification_view(mixed)
    perm = Task("p", "multiple_choice", [Example("a", ("yes", "no"), 0), Example("b", ("no", "yes"), 0)], [], [])
    view = classification_view(perm)
    assert view.labels == ("yes", "no") and view.label_ids(perm.train) == [0, 1]
    assert classification_view(perm, ["no", "yes"]).label_ids(perm.train) == [1, 0]


def test_long_prompts_lose_their_start_not_the_question(tiny_bert_dir):
    """Training and evaluation both cut a prompt over max_length at its start: the question at its end is read."""
    from slimtune.classify.data import ClassificationDataset
    from slimtune.evaluate.classification import classifier_logits

    net, tok = load_classifier(tiny_bert_dir, ("no", "yes"), seed=0)
    common = " ".join(["so"] * 40)  # the last tokens of all three, beyond 16 of them
    texts = [f"{'fact ' * 300}{common} Question: is it true?", f"{'rule ' * 300}{common} Question: is it true?",
             f"{'fact ' * 300}{common} Question: is it false?"]
    task = Task("t", "multiple_choice", [Example(t, ("no", "yes"), 0) for t in texts], [], [])
    items = ClassificationDataset(classification_view(task), task.train, tok, max_length=16).items
    ends = [i["input_ids"] for i in items]
    assert [len(e) for e in ends] == [16] * 3 and tok.decode(ends[0]).endswith("Question: is it true?")
    assert ends[0] == ends[1] and ends[0] != ends[2]
    assert tok.truncation_side == "right"  # restored
    logits = classifier_logits(net.eval(), tok, texts, max_length=16)
    assert torch.allclose(logits[0], logits[1], atol=1e-6) and not torch.allclose(logits[0], logits[2], atol=1e-4)


def test_distillation_loss_for_classifier_logits():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    ce = torch.nn.functional.cross_entropy(s, torch.tensor([0, 1, 2, 0]))
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1), log_target=True,
                                    reduction="batchmean")
    got = distillation_loss(s, t, torch.tensor([0, 1, 2, 0]), ce)
    assert got.item() == pytest.approx((0.1 * ce + 0.9 * 4 * kl).item(), rel=1e-6)


def test_finetune_full_classifier_evaluate_and_lineage(tiny_bert_dir, tmp_path):
    out = api.finetune(tiny_bert_dir, out=tmp_path / "full", task="polarity", adapter="full", importance=True,
                       progress=False, **FAST)
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["method"] == "full-classifier" and manifest["config"]["labels"] == ["negative", "positive"]
    assert manifest["config"]["train"]["learning_rate"] == 5e-5  # full fine-tuning's own default
    imp = json.loads((out / "importance.json").read_text())
    assert imp["steps"] == 4 and len(imp["dimensions"]["bert.encoder.layer.0:heads"]["scores"]) == 4
    net, _ = load_model(out)
    assert type(net).__name__ == "BertForSequenceClassification"
    before, _ = load_classifier(tiny_bert_dir, ("negative", "positive"), seed=42)
    assert not torch.equal(before.bert.encoder.layer[0].attention.self.query.weight,
                           net.bert.encoder.layer[0].attention.self.query.weight)  # the weights themselves trained
    result = api.evaluate(out, task="polarity", split="test", progress=False)
    assert result["n"] == 50 and 0 <= result["acc"] <= 1 and len(result["acc_ci"]) == 2
    assert len(result["scores"]) == 50 and result["held_out"]
    with pytest.raises(Exception, match="(?i)train"):
        api.evaluate(out, task="polarity", split="train", progress=False)


def test_finetune_lora_classifier_merges(tiny_bert_dir, tmp_path):
    out = api.finetune(tiny_bert_dir, out=tmp_path / "lora", task="polarity", adapter="lora", rank=4,
                       importance=True, progress=False, **FAST)
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["method"] == "lora-classifier" and manifest["metrics"]["importance_steps"] > 0
    net, tok = load_model(out)
    assert not any("lora" in n for n, _ in net.named_parameters())
    before, _ = load_classifier(tiny_bert_dir, ("negative", "positive"), seed=42)
    assert not torch.equal(before.classifier.weight, net.classifier.weight)  # the head trained
    assert api.evaluate(out, task="polarity", progress=False)["n"] == 50


def test_encoder_refusals(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="sparse and quantization-aware adapters are for causal LMs"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="nls", sparse_adapter=True,
                     progress=False, **FAST)
    with pytest.raises(ConfigError, match="adapter paca is for causal LMs here"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="paca", progress=False, **FAST)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="without a classification head"):
        load_classifier(tiny_bert_dir)


def test_full_finetune_distilled_from_a_teacher_classifier(tiny_bert_dir, tmp_path):
    from slimtune.lineage import LeakageError

    teacher = api.finetune(tiny_bert_dir, out=tmp_path / "teacher", task="polarity", adapter="full", split_seed=1,
                           progress=False, **FAST)  # trained on split seed 1's training examples
    runs = {name: api.finetune(tiny_bert_dir, out=tmp_path / name, task="polarity", adapter="full", progress=False,
                               **{**FAST, "learning_rate": 1e-3}, **extra)
            for name, extra in [("plain", {}), ("ce-only", {"distill": {"teacher": str(teacher), "distill_alpha": 1.0}}),
                                ("distilled", {"distill": {"teacher": str(teacher)}})]}
    weights = {n: load_model(p)[0].classifier.weight for n, p in runs.items()}
    assert torch.allclose(weights["ce-only"], weights["plain"], atol=1e-6)  # a = 1: the cross-entropy alone
    init = load_classifier(tiny_bert_dir, ("negative", "positive"), seed=42)[0].classifier.weight
    step = (weights["plain"] - init).abs().max()  # what 4 steps moved the head
    assert (weights["distilled"] - weights["plain"]).abs().max() > 0.05 * step  # a = 0.1: the teacher's KL trains
    manifest = json.loads((runs["distilled"] / "slimtune.json").read_text())
    assert manifest["config"]["distill"] == {"teacher": str(teacher), "distill_alpha": 0.1, "temperature": 2.0}
    assert manifest["inputs"]["teacher"]["path"].endswith("teacher")
    assert {r["split_seed"] for r in manifest["lineage"] if r["use"] == "train"} == {0, 1}
    # the teacher's training examples are the student's too: split seed 0's test set overlaps them
    with pytest.raises(LeakageError):
        api.evaluate(runs["distilled"], task="polarity", split="test", progress=False)
    api.evaluate(runs["plain"], task="polarity", split="test", progress=False)


def test_distillation_refusals(tiny_bert_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="is not a fine-tuned classifier"):
        api.finetune(tiny_bert_dir, out=tmp_path / "x", task="polarity", adapter="full",
                     distill={"teacher": str(tiny_bert_dir)}, progress=False, **FAST)
    with pytest.raises(ConfigError, match="full fine-tuning of a causal LM learns from the task's labels alone"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", task="polarity", adapter="full",
                     distill={"teacher": str(tiny_llama_dir)}, progress=False, **FAST)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("adapter", ["lora", "nls"])
def test_adapted_classifiers_take_a_teacher(tiny_bert_dir, tmp_path, adapter):
    teacher = api.finetune(tiny_bert_dir, out=tmp_path / "teacher", task="polarity", adapter="full", progress=False,
                           **FAST)
    out = api.finetune(tiny_bert_dir, out=tmp_path / "student", task="polarity", adapter=adapter, rank=4,
                       distill={"teacher": str(teacher), "distill_alpha": 0.0}, progress=False, **FAST)
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["config"]["distill"]["teacher"] == str(teacher) and "teacher" in manifest["inputs"]
    assert manifest["metrics"]["train_loss"] < 0.01  # a = 0: the KL to the teacher alone, not the CE (~0.69)
