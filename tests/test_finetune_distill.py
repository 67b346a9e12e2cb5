"""finetune --teacher: an adapter (LoRA, or a LoNAS super-network's sampled sub-networks) learns a frozen
teacher's next-token distributions; the teacher's lineage guards the student's evaluations."""

import json

import pytest

from slimtune import api
from slimtune.errors import ConfigError
from slimtune.lineage import LeakageError
from slimtune.models import build_tiny_model

TRAIN = dict(max_steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=0, save_steps=50, max_length=64, seed=3,
             dropout=0.0, progress=False)


def _train_loss(adapter) -> float:
    return json.loads((adapter / "slimtune.json").read_text())["metrics"]["train_loss"]


def test_pure_distillation_from_the_base_itself_has_nothing_to_learn(tiny_llama_dir, tmp_path):
    # a LoRA starts as its base (B = 0): with the base as teacher and no cross-entropy (a = 0) the loss is the
    # KL between two equal distributions, ~0; without the teacher it is the completions' cross-entropy
    plain = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "plain", **TRAIN)
    taught = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "taught",
                          distill={"teacher": str(tiny_llama_dir), "distill_alpha": 0.0}, **TRAIN)
    assert _train_loss(plain) > 1.0
    assert _train_loss(taught) < 1e-4
    manifest = json.loads((taught / "slimtune.json").read_text())
    assert manifest["config"]["distill"] == {"teacher": str(tiny_llama_dir), "distill_alpha": 0.0, "temperature": 2.0}
    assert manifest["inputs"]["teacher"]["path"] == str(tiny_llama_dir)


def test_lonas_supernetwork_distils_every_sampled_configuration(tiny_llama_dir, tmp_path):
    # sandwich with the base as teacher and a = 0: every configuration's loss is its KL from the base (the
    # cross-entropy would be ~6 nats); the maximal configuration is the base itself, the minimal one is cut
    teacher = dict(teacher=str(tiny_llama_dir), distill_alpha=0.0)
    supernet = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                            widths=["mlp"], sampler="sandwich", distill=teacher, **TRAIN)
    history = json.loads((supernet / "elastic_history.json").read_text())
    assert len(history) == 3 * TRAIN["max_steps"] and max(h["loss"] for h in history) < 1e-2
    for step in range(1, TRAIN["max_steps"] + 1):
        maximal, _, minimal = [h for h in history if h["step"] == step]
        assert minimal["config"] != maximal["config"]
        assert maximal["loss"] < 1e-4 < minimal["loss"]


def test_teacher_lineage_guards_the_students_evaluation(tiny_llama_dir, tmp_path):
    # a teacher fine-tuned on another split of the task has seen part of this split's test examples
    lora = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "t", split_seed=1, **TRAIN)
    teacher = api.merge(lora, out=tmp_path / "teacher")
    student = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "s", distill={"teacher": str(teacher)},
                           **TRAIN)
    with pytest.raises(LeakageError):
        api.evaluate(tiny_llama_dir, adapter=student, task="polarity", limit=40, progress=False)


def test_distillation_is_refused_before_work(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="need a teacher and adapter lora or nls"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="adalora", distill={"teacher": str(tiny_llama_dir)},
                     **TRAIN)
    with pytest.raises(ConfigError, match="need a teacher"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", distill={"temperature": 3.0}, **TRAIN)
    other = build_tiny_model(tmp_path / "other-vocab", arch="llama", seed=0, vocab_size=300)
    with pytest.raises(ConfigError, match="vocabulary of 300 tokens.*same vocabulary"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", distill={"teacher": str(other)}, **TRAIN)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.checkpoints").exists()
