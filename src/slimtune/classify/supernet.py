"""EFTNAS stage 2 for encoder classifiers: the elastic-width super-network trained with the sandwich rule
and distillation, and sub-networks extracted from it.

`train_supernet(space_dir, teacher, task, ...)` loads the reordered classifier and its search space (the
`space` stage's output), activates [maximal, random, minimal] configurations each optimizer step
(nas.ElasticSampler, rule 'sandwich'), and trains every weight on the sum of their losses
(train.Objective, reduction 'sum': the gradients accumulate), each loss 0.1·CE + 0.9·T²·KL(teacher ‖
student) at T = 2 with the teacher's logits computed once per batch.
`extract_classifier(net, space, config)` is nas.extract_subnetwork for a classifier: physically smaller,
exactly the width-sliced super-network. Stock BERT configs derive the head size from hidden/heads, so a
sub-network with fewer heads cannot be described by a stock config: `check_savable` refuses a plain
save_pretrained of it, and the `extract` stage (eftnas.extract_elastic) records its per-layer shapes
and heads instead (widths_io), which slimtune's loader rebuilds. One with only narrower (uniform) MLP
widths saves and loads back with plain transformers.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..train import Objective, TrainConfig, train
from .data import ClassificationDataset, LabelCollator, classification_view
from .model import classifier_labels, load_classifier, load_teacher_classifier


def train_supernet(space_dir: str | Path, teacher: str | Path, task, config: TrainConfig, checkpoints: str | Path,
                   progress: bool = False, alpha: float = 0.1, temperature: float = 2.0, rule: str = "sandwich",
                   targets: list[dict[str, int]] | None = None):
    """(super-network, tokenizer, search space, training metrics with the sampled history). `rule`: the
    sampler's (nas.sampling: sandwich, EFTNAS'; uniform; budgets, drawing from `targets`)."""
    from ..nas import ElasticSampler, SearchSpace

    net, tokenizer = load_classifier(space_dir)
    teacher_net = load_teacher_classifier(teacher, classifier_labels(net))
    space = SearchSpace.load(space_dir)
    view = classification_view(task, classifier_labels(net))
    for p in net.parameters():
        p.requires_grad_(True)
    sampler = ElasticSampler(net, space, seed=config.seed, rule=rule, targets=targets)
    objective = Objective(sampler=sampler, reduction="sum", teacher=teacher_net, alpha=alpha, temperature=temperature)
    metrics = train(net, tokenizer, task.train, config, checkpoints, callbacks=[sampler], objective=objective,
                    progress=progress, fresh=True, run_key={"supernet": str(space_dir), "teacher": str(teacher)},
                    dataset=ClassificationDataset(view, task.train, tokenizer, config.max_length),
                    collator=LabelCollator(tokenizer.pad_token_id))
    for p in net.parameters():
        p.requires_grad_(False)
    space.apply(net, space.maximal())
    metrics["sampled"] = sampler.history
    return net, tokenizer, space, metrics


def extract_classifier(net, space, config: dict[str, int]):
    """A physically smaller classifier computing the sub-network `config` (module docstring)."""
    from ..nas.elastic_model import derived_head_size, extract_model

    heads = {n: c for n, c in space.check(config).items() if n.endswith(":heads")}
    sub, _ = extract_model(net, space, config)  # keeps the config's head count where the head size is derived
    if any(c != space.dimensions[n].choices[0] for n, c in heads.items()) and derived_head_size(net):
        sub.slimtune_in_memory_only = True  # stock BERT cannot describe fewer heads: it runs in memory only
    return sub


def check_savable(sub) -> None:
    if getattr(sub, "slimtune_in_memory_only", False):
        raise ConfigError("this sub-network drops attention heads of a BERT-like model, whose stock config derives the "
                          "head size from hidden / heads: plain transformers cannot load it; write it with the extract stage "
                          "(slimtune extract), which records its per-layer widths for slimtune's loader")
