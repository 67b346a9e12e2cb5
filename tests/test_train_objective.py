"""The trainer's objective hook: several configurations per step, distillation, regularizers."""

import copy
import random

import pytest
import torch
from transformers import TrainerCallback

from slimtune.adapters import add_lora, lora_layers
from slimtune.architectures import architecture_of
from slimtune.data import load_task
from slimtune.errors import ConfigError
from slimtune.models import load_model, target_modules
from slimtune.nas import ElasticSampler, ElasticSpace, sandwich, uniform
from slimtune.nas.sampling import budgets
from slimtune.train import ExampleDataset, Objective, PadCollator, TrainConfig, distillation_loss, train


class _Grads(TrainerCallback):
    """The gradients the optimizer is about to apply (after Trainer's norm clipping)."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


def _elastic_model(model_dir):
    net, tok = load_model(model_dir)
    names = target_modules(net)
    add_lora(net, names, r=8, alpha=16, dropout=0.0, rank_space=[8, 4, 2], seed=0)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_B.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    space = ElasticSpace.build(names, [8, 4, 2], "shears", architecture_of(net))
    return net, tok, space


def _one_step(net, tok, examples, tmp_path, **kwargs):
    grads = _Grads(net)
    config = TrainConfig(max_steps=1, batch_size=len(examples), warmup_steps=0, learning_rate=1e-3, max_length=48,
                         seed=1)
    train(net, tok, examples, config, tmp_path, callbacks=[*kwargs.pop("callbacks", []), grads], progress=False,
          **kwargs)
    return grads.grads


def _manual_grads(net, tok, examples, losses):
    """Gradients of sum(losses(net, batch)) on the whole batch, clipped as Trainer clips (max norm 1)."""
    items = ExampleDataset(examples, tok, 48, add_eos=False).items
    batch = PadCollator(tok.pad_token_id)(items)
    net.train()
    sum(losses(net, batch)).backward()
    params = [p for p in net.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    return {n: p.grad for n, p in net.named_parameters() if p.requires_grad}


def test_uniform_keeps_its_random_sequence_and_sandwich_adds_max_and_min():
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    space = ElasticSpace.build(names, [8, 6, 4, 2], "module")
    for seed, step in [(0, 0), (7, 3), (42, 11)]:
        rng = random.Random(seed * 1_000_003 + step)  # what the rank-group sampler drew
        old = {g: rng.choice([8, 6, 4, 2]) for g in names}
        assert uniform(space, seed, step) == [old]
        assert sandwich(space, seed, step) == [space.maximal(), old, space.minimal()]
    with pytest.raises(ConfigError, match="unknown sampling rule"):
        ElasticSampler(None, space, rule="bogus")


def test_budgets_rule_draws_the_middle_configuration_from_its_targets():
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    space = ElasticSpace.build(names, [8, 6, 4, 2], "module")
    targets = [{names[0]: 6, names[1]: 6, names[2]: 4}, {names[0]: 4}]
    sampler = ElasticSampler(None, space, seed=5, rule="budgets", targets=targets)
    assert sampler.configs_per_step == 3
    drawn = [sampler.sample(step) for step in range(40)]
    for step, configs in enumerate(drawn):
        assert configs == budgets(space, 5, step, sampler.targets)
        assert configs[0] == space.maximal() and configs[2] == space.minimal()
    # each target, completed with the maximal choice of the dimensions it leaves out, is drawn
    assert {str(c[1]) for c in drawn} == {str(space.check(t)) for t in targets}
    with pytest.raises(ConfigError, match="draws from target configurations, and none was given"):
        ElasticSampler(None, space, rule="budgets")
    with pytest.raises(ConfigError, match="target configurations are for the budgets rule, not 'sandwich'"):
        ElasticSampler(None, space, rule="sandwich", targets=targets)
    with pytest.raises(ConfigError, match="outside its space"):
        ElasticSampler(None, space, rule="budgets", targets=[{names[0]: 5}])


def test_a_sandwich_step_accumulates_the_gradients_of_all_three_configurations(tiny_llama_dir, tmp_path):
    examples = load_task("polarity").train[:4]
    net, tok, space = _elastic_model(tiny_llama_dir)
    manual = copy.deepcopy(net)
    sampler = ElasticSampler(net, space, seed=3, rule="sandwich")
    got = _one_step(net, tok, examples, tmp_path / "ck", callbacks=[sampler])
    configs = sandwich(space, 3, 0)
    assert len({str(c) for c in configs}) == 3
    assert [h["config"] for h in sampler.history] == configs and all(h["loss"] > 0 for h in sampler.history)

    def losses(model, batch):
        for config in configs:
            space.apply(model, config)
            yield model(**batch).loss / 3  # the objective's default reduction: the mean over configurations

    expected = _manual_grads(manual, tok, examples, losses)
    assert got.keys() == expected.keys()
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-7, msg=n)
    # rank columns that only the maximal configuration uses got its gradient, and the minimal's are there too
    b = got["model.layers.0.mlp.down_proj.lora_B.weight"]
    assert b[:, 4:].abs().sum() > 0 and b[:, :2].abs().sum() > 0


def test_gradient_checkpointing_is_refused_with_several_configurations(tiny_llama_dir, tmp_path):
    net, tok, space = _elastic_model(tiny_llama_dir)
    config = TrainConfig(max_steps=1, batch_size=2, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        train(net, tok, load_task("polarity").train[:2], config, tmp_path,
              callbacks=[ElasticSampler(net, space, rule="sandwich")], progress=False)


def test_distillation_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    ce, a, t = torch.tensor(1.7), 0.1, 2.0
    kls = []
    for i in range(2):
        for j in range(4):
            if labels[i, j + 1] != -100:  # logits at j predict label j + 1
                p_t = torch.softmax(teacher[i, j] / t, -1)
                p_s = torch.softmax(student[i, j] / t, -1)
                kls.append((p_t * (p_t.log() - p_s.log())).sum())
    kl = torch.stack(kls).mean()
    expected = a * ce + (1 - a) * t * t * kl
    torch.testing.assert_close(distillation_loss(student, teacher, labels, ce), expected)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, ce, num_items=10),
                               a * ce + (1 - a) * t * t * kl * len(kls) / 10)
    assert distillation_loss(student, student, labels, ce, alpha=0.5) == pytest.approx(0.85)


def test_distillation_and_regularizers_train_through_the_objective(tiny_llama_dir, tmp_path):
    examples = load_task("polarity").train[:4]
    net, tok, space = _elastic_model(tiny_llama_dir)
    manual = copy.deepcopy(net)
    teacher, _ = load_model(tiny_llama_dir)
    teacher.eval()

    def l2(model, outputs):
        return 1e-3 * sum((p ** 2).sum() for p in model.parameters() if p.requires_grad)

    sampler = ElasticSampler(net, space, seed=5)  # uniform: one configuration per step
    got = _one_step(net, tok, examples, tmp_path / "ck", callbacks=[sampler],
                    objective=Objective(teacher=teacher, regularizers=[l2]))
    [config] = uniform(space, 5, 0)

    def losses(model, batch):
        space.apply(model, config)
        out = model(**batch)
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        yield distillation_loss(out.logits, t_logits, batch["labels"], out.loss) + l2(model, out)

    expected = _manual_grads(manual, tok, examples, losses)
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-7, msg=n)
