"""The finetune stage for encoders: a sequence classifier trained on a task's classification view.

adapter 'full' trains every weight and the new head (EFTNAS' teacher: the weights themselves are what
gets sliced later); 'lora' trains LoRA adapters on the block's projections plus the head (and pooler),
then merges them. Either way the artifact is an AutoModelForSequenceClassification directory (labels
in id2label) with a manifest whose lineage records the training examples, so `evaluate` refuses them.
With importance, importance.json holds first-order head / neuron scores (nas.importance): summed over
every optimizer step of full fine-tuning, or over one pass of the training split after the merge.
With a teacher (a fine-tuned classifier over the same labels), each loss is a·CE + (1-a)·T²·KL(teacher ‖
student) of the class distributions (train.Objective), and the teacher's lineage joins the artifact's.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import lineage
from ..configs import FinetuneConfig
from ..data import DEFAULT_TASK
from ..errors import ConfigError
from ..train import Objective, build_full_train_config, build_train_config, train
from .data import ClassificationDataset, LabelCollator, classification_view
from .model import load_classifier, load_teacher_classifier


def _head_parameters(net) -> list[str]:
    prefix = getattr(net, "base_model_prefix", "") + "."
    return [n for n, _ in net.named_parameters() if not n.startswith(prefix) or ".pooler." in n]


def importance_batches(dataset, collator, batch_size: int):
    items = [dataset[i] for i in range(len(dataset))]
    return (collator(items[i:i + batch_size]) for i in range(0, len(items), batch_size))


def finetune_classifier(model, *, out: Path, cfg: FinetuneConfig, train_overrides: dict, overwrite: bool = False,
                        progress: bool = True, started: float | None = None) -> Path:
    from ..adapters import add_lora, merge_adapters
    from ..full_finetune import save_tuned
    from ..models import target_modules
    from ..nas.importance import ImportanceCallback, collect_importance
    from .elastic import add_elastic, check_encoder_options, save_super_adapter

    started = started or time.time()
    check_encoder_options(cfg, model)
    config = (build_full_train_config if cfg.adapter == "full" else build_train_config)(cfg.train, **train_overrides)
    task = lineage.task_split(cfg.task or DEFAULT_TASK, cfg.split_seed)
    view = classification_view(task)
    if not task.train:
        raise ConfigError(f"task {task.spec} has no training examples (split seed {cfg.split_seed})")
    distill = cfg.distill
    teacher = load_teacher_classifier(distill.teacher, view.labels) if distill.teacher else None
    net, tokenizer = load_classifier(model, view.labels, seed=config.seed)
    names, rank, space, sampler, rank_space = [], None, None, None, None
    if cfg.adapter in ("lora", "nls"):
        names, rank = target_modules(net, list(cfg.targets) if cfg.targets else None), cfg.rank or 16
        if cfg.adapter == "nls":  # elastic ranks (and widths): a super-adapter, searched later
            space, sampler, rank, rank_space = add_elastic(net, names, cfg, config.seed)
        else:
            add_lora(net, names, r=rank, alpha=cfg.alpha, dropout=0.05 if cfg.dropout is None else cfg.dropout,
                     seed=config.seed)
        head = set(_head_parameters(net))
        for n, p in net.named_parameters():
            if n in head:
                p.requires_grad_(True)
    else:
        for p in net.parameters():
            p.requires_grad_(True)
    callbacks = [ImportanceCallback(net, source="finetune")] if cfg.importance and cfg.adapter == "full" else []
    dataset = ClassificationDataset(view, task.train, tokenizer, config.max_length)
    collator = LabelCollator(tokenizer.pad_token_id)
    checkpoints = out.parent / f".{out.name}.checkpoints"
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    metrics = train(net, tokenizer, task.train, config, checkpoints, callbacks=callbacks + ([sampler] if sampler else []),
                    fresh=overwrite, progress=progress, dataset=dataset, collator=collator,
                    run_key={"model": str(model), "classifier": list(view.labels),
                             "distill": distill.model_dump() if teacher is not None else None},
                    objective=None if teacher is None else Objective(
                        teacher=teacher, alpha=distill.distill_alpha, temperature=distill.temperature))
    if sampler is not None:
        from ..nas.lonas import training_metrics

        metrics.update(training_metrics(net, space, sampler.history))
    elif names:
        merge_adapters(net)
    importance = callbacks[0].importance if callbacks else None
    if cfg.importance and importance is None:
        importance = collect_importance(net, importance_batches(dataset, collator, config.batch_size),
                                        source="finetune-pass")
    method = ("lonas" if cfg.widths else "nls") if sampler is not None else cfg.adapter
    write = None if sampler is None else (  # the super-adapter, its base classifier (head trained) inside
        lambda tmp: save_super_adapter(net, tokenizer, tmp, out, space, sampler, model))
    return save_tuned(out, net, tokenizer, model=model, task=task, importance=importance,
                      method=f"{method}-classifier", overwrite=overwrite, started=started, seed=config.seed,
                      config={**cfg.record(), "model": str(model), "task": task.spec, "labels": list(view.labels),
                              "targets": names or None, "rank": rank, "rank_space": rank_space,
                              "train": config.model_dump()},
                      metrics={**metrics, "trainable_parameters": trainable}, checkpoints=checkpoints, write=write,
                      teacher=distill.teacher)
