"""EFTNAS pieces: importance per head / neuron, search spaces from budgets, importance reordering."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from slimtune.errors import ConfigError
from slimtune.nas.budgets import budget_fractions, cost_model, format_space, generate_space
from slimtune.nas.importance import (Importance, ImportanceAccumulator, collect_importance, space_from_widths,
                                     structure_dimensions)
from slimtune.nas.reorder import reorder_model


def _bert(path, seed=0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()


def _batches(vocab, n=3, seed=0, classes=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (4, 12), generator=g)
        labels = torch.randint(0, 2, (4,), generator=g) if classes else ids.clone()
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def test_structures_of_bert_and_llama(tiny_bert_dir, tiny_llama):
    bert = _bert(tiny_bert_dir)
    names = [d.name for d in structure_dimensions(bert)]
    assert names == ["bert.encoder.layer.0:heads", "bert.encoder.layer.1:heads",
                     "bert.encoder.layer.0:mlp", "bert.encoder.layer.1:mlp"]
    assert [d.choices[0] for d in structure_dimensions(bert)] == [4, 4, 128, 128]
    assert [d.choices[0] for d in structure_dimensions(tiny_llama)] == [2, 2, 128, 128]  # KV groups


def test_importance_is_minus_w_times_grad(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    batch = _batches(model.config.vocab_size, 1)[0]
    imp = collect_importance(model, [batch])
    model.zero_grad()
    model(**batch).loss.backward()
    q = model.bert.encoder.layer[1].attention.self.query
    o = model.bert.encoder.layer[1].attention.output.dense
    k, v = model.bert.encoder.layer[1].attention.self.key, model.bert.encoder.layer[1].attention.self.value
    h = slice(16, 32)  # head 1 of 4 (head dim 16)
    expected = -sum(((m.weight * m.weight.grad)[h].sum() + (m.bias * m.bias.grad)[h].sum()) for m in (q, k, v))
    expected = expected - (o.weight * o.weight.grad)[:, h].sum()
    assert imp.scores["bert.encoder.layer.1:heads"][1].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-9)
    up, down = model.bert.encoder.layer[0].intermediate.dense, model.bert.encoder.layer[0].output.dense
    j = 7
    neuron = -((up.weight * up.weight.grad)[j].sum() + up.bias[j] * up.bias.grad[j]
               + (down.weight * down.weight.grad)[:, j].sum())
    assert imp.scores["bert.encoder.layer.0:mlp"][j].item() == pytest.approx(neuron.item(), rel=1e-4, abs=1e-9)
    assert imp.steps == 1


def test_importance_restores_flags_and_roundtrips(tiny_llama, tmp_path):
    for p in tiny_llama.parameters():
        p.requires_grad_(False)
    imp = collect_importance(tiny_llama, _batches(tiny_llama.config.vocab_size, 2, classes=False))
    assert not any(p.requires_grad for p in tiny_llama.parameters())
    assert imp.steps == 2 and set(imp.scores) == {d.name for d in structure_dimensions(tiny_llama)}
    back = Importance.load(imp.save(tmp_path))
    assert all(torch.equal(back.scores[n], imp.scores[n]) for n in imp.scores)
    with pytest.raises(ConfigError):
        ImportanceAccumulator(tiny_llama).importance.check(structure_dimensions(tiny_llama, mlp=False)[:1] + [
            structure_dimensions(tiny_llama)[-1].__class__("x:mlp", [3], [])])


def _random_importance(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Importance({d.name: torch.randn(d.choices[0], generator=g, dtype=torch.float64)
                       for d in structure_dimensions(model)})


@pytest.mark.parametrize("metric,low", [("macs", 0.4), ("params", 0.7)])  # params: embeddings stay
def test_space_meets_budgets_within_one_percent(tiny_bert_dir, metric, low):
    model = _bert(tiny_bert_dir)
    imp = _random_importance(model)
    result = generate_space(model, imp, budgets=5, min_fraction=low, metric=metric)
    assert [r["fraction"] for r in result["budgets"]] == sorted(budget_fractions(5, low), reverse=True)
    for r in result["budgets"]:
        assert abs(r["cost"] - r["target"]) <= 0.01 * r["target"]
    for name, choices in result["space"].items():
        assert choices == sorted(set(choices), reverse=True) and choices[0] == dict(
            (d.name, d.choices[0]) for d in structure_dimensions(model))[name]
    if metric == "params":  # the cost model counts what SearchSpace.size counts
        space = space_from_widths(model, result["space"])
        for r in result["budgets"]:
            assert space.size(model, r["widths"]) == r["cost"]
    assert result == generate_space(model, imp, budgets=5, min_fraction=low, metric=metric)  # deterministic
    assert f"budget {low:.3f}" in format_space(result)


def test_space_keeps_most_important_units(tiny_llama):
    imp = _random_importance(tiny_llama, seed=3)
    result = generate_space(tiny_llama, imp, budgets=[0.7], metric="params")
    assert abs(result["budgets"][0]["relative_error"]) <= 0.01
    costs = cost_model(tiny_llama, structure_dimensions(tiny_llama), "params")
    assert costs.total == sum(p.numel() for p in tiny_llama.parameters())
    with pytest.raises(ConfigError, match="below the smallest"):
        generate_space(tiny_llama, imp, budgets=[0.01], metric="params")


def _assert_reorder_identical(model, batch, imp):
    with torch.no_grad():
        before = model(**batch).logits
    reordered = reorder_model(model, imp)
    with torch.no_grad():
        after = model(**batch).logits
    assert (after - before).abs().max().item() <= 1e-5
    for name, scores in reordered.scores.items():
        assert torch.all(scores[:-1] >= scores[1:]), name
    return reordered


def test_reorder_is_output_identical_bert(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    batch = {k: v for k, v in _batches(model.config.vocab_size, 1)[0].items() if k != "labels"}
    batch["attention_mask"][:, -3:] = 0  # padding too
    imp = _random_importance(model)
    w = model.bert.encoder.layer[0].intermediate.dense.weight.clone()
    reordered = _assert_reorder_identical(model, batch, imp)
    top = int(torch.argmax(imp.scores["bert.encoder.layer.0:mlp"]))
    assert torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight[0], w[top])
    # after reordering, a width-sliced prefix is the sub-network of the most important units
    space = space_from_widths(model, {"bert.encoder.layer.0:heads": [4, 2], "bert.encoder.layer.0:mlp": [128, 64]})
    space.apply(model, {"bert.encoder.layer.0:heads": 2, "bert.encoder.layer.0:mlp": 64})
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    assert reordered.steps == imp.steps


def test_reorder_is_output_identical_llama(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    batch = {k: v for k, v in _batches(model.config.vocab_size, 1, classes=False)[0].items() if k != "labels"}
    _assert_reorder_identical(model, batch, _random_importance(model, seed=1))
