"""The finetune stage: an adapter trained on a task's training split, written as a PEFT adapter
directory with a manifest (api.finetune re-exports it). What kind of adapter, and how it trains
(elastic ranks, their sampling), is decided here; the layers live in adapters/, the search
spaces in nas/, the training loop in train.py. An encoder goes to classify/stage.py (a sequence
classifier, fully fine-tuned or with LoRA merged), a causal LM's `adapter full` to full_finetune.py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from . import lineage
from .adapted import check_adapter_args, check_sparse_base, float_weights, method_name, resolve_qa_weights, zero_fraction
from .adapters import adapter_layers, add_lora, save_adapter
from .architectures import require_causal_lm
from .artifacts import atomic_dir, check_output_dir, write_manifest
from .configs import FinetuneConfig
from .data import DEFAULT_TASK
from .errors import ConfigError
from .models import DEFAULT_MODEL, load_model, target_modules
from .train import TrainConfig, barrier, build_train_config, is_main_process, train


def finetune(model: str | Path = DEFAULT_MODEL, *, out: str | Path, config: FinetuneConfig | dict | None = None,
             train_config: TrainConfig | dict | None = None, overwrite: bool = False, progress: bool = True,
             **options: Any) -> Path:
    """Train an adapter on the task's training split; write it as a PEFT adapter to `out`.

    adapter='lora' trains a fixed rank (default 16); adapter='nls' trains an elastic super-adapter
    over `rank_space` (default [r, 3r/4, r/2], r = 32) with ranks shared by `groups` (shears,
    block, module) and sampled once per optimizer step; the artifact adds elastic_config.json and
    the per-step training history. sparse_adapter masks the update by the base's zeros
    (SparsePEFT); quant_aware trains on the quantized base's own grid (QA-SparsePEFT), merging into
    the float weights before quantization (qa_weights='float', SQFT's choice; float_base defaults to
    the model a slimtune-quantized base was made from) or into the dequantized base ('quantized':
    exact GPTQ model at the start, but an update changes it only once it crosses half a grid step,
    so it learns far more slowly: bench/RESULTS.md). 'auto' is 'float' when the float model is
    known, else 'quantized' (with a warning). adapter='full' trains every weight and writes the whole model
    (full_finetune.py; with importance, importance.json summed over its steps: EFTNAS' teacher).
    The task's split is fixed by `split_seed` (default 0), not by the training seed; the manifest's
    lineage records the training examples, so evaluation refuses to report on them.
    An interrupted run resumes from its last checkpoint (kept beside `out` until it finishes).
    Options: configs.FinetuneConfig, as `config` or keywords; keywords that are not its fields are
    training settings (TrainConfig: epochs, learning_rate, ...), as is `train_config`.
    """
    started = time.time()
    out = check_output_dir(out, overwrite)
    train_overrides = {k: options.pop(k) for k in list(options) if k not in FinetuneConfig.model_fields}
    if train_config is not None:
        options["train"] = train_config
    cfg = FinetuneConfig.build(config, options)
    from .classify import is_encoder_spec

    if is_encoder_spec(model):  # an encoder: a sequence classifier with a trainable head (classify/stage.py)
        from .classify.stage import finetune_classifier

        return finetune_classifier(model, out=out, cfg=cfg, train_overrides=train_overrides, overwrite=overwrite,
                                   progress=progress, started=started)
    if cfg.adapter == "full":  # every weight of a causal LM (full_finetune.py): EFTNAS' decoder teacher
        if cfg.distill.teacher:
            raise ConfigError("a teacher distils a causal LM's adapter (lora or nls) or an encoder classifier; full "
                              "fine-tuning of a causal LM learns from the task's labels alone")
        from .full_finetune import finetune_causal_full

        return finetune_causal_full(model, out=out, cfg=cfg, train_overrides=train_overrides, overwrite=overwrite,
                                    progress=progress, started=started)
    if cfg.importance:
        raise ConfigError("importance during fine-tuning is summed over full fine-tuning's steps (--adapter full); "
                          "for an adapter on a causal LM collect it afterwards with `slimtune importance`")
    config = build_train_config(cfg.train, **train_overrides)
    task, adapter, targets, alpha, groups = cfg.task or DEFAULT_TASK, cfg.adapter, cfg.targets, cfg.alpha, cfg.groups
    sparse_adapter, quant_aware, split_seed = cfg.sparse_adapter, cfg.quant_aware, cfg.split_seed
    dropout = (0.0 if sparse_adapter or quant_aware or adapter == "paca" else 0.05) if cfg.dropout is None else cfg.dropout
    r_max, space = check_adapter_args(adapter, cfg.rank, cfg.rank_space, groups)
    qa_weights, float_base = resolve_qa_weights(model, quant_aware, cfg.qa_weights, cfg.float_base)
    if cfg.widths:  # LoNAS slices float bases only: a packed INT4 base is refused before anything loads
        from .adapted import quantized_input
        from .models import is_packed_quantized
        from .nas.lonas import quantized_base_error

        if is_packed_quantized(model):
            raise quantized_base_error(str(model), quantized_input(model))
    task_obj = lineage.task_split(task, split_seed)
    if not task_obj.train:
        raise ConfigError(f"task {task_obj.spec} has no training examples (split seed {split_seed})")
    net, tokenizer = load_model(model)
    require_causal_lm(net, "finetune")
    names = target_modules(net, list(targets) if targets else None)
    width_dims, orders = None, {}
    if cfg.widths:  # LoNAS: elastic base widths (reordered by importance first if asked)
        from .nas.lonas import width_dimensions
        from .nas.reorder import reorder

        width_dims = width_dimensions(net, cfg.widths, cfg.mlp_fractions, cfg.head_fractions)
        orders = reorder(net, width_dims, cfg.width_order)
    zeros = zero_fraction(net, names)
    check_sparse_base(zeros, sparse_adapter, model)
    qa = float_weights(float_base, names) if quant_aware and qa_weights == "float" else None
    objective, distill = None, cfg.distill
    if distill.teacher:  # loaded (and its vocabulary checked) before any training; lora and nls only (configs)
        from .distill import load_teacher
        from .train import Objective

        objective = Objective(teacher=load_teacher(distill.teacher, net), alpha=distill.distill_alpha,
                              temperature=distill.temperature)
    callbacks, elastic, setup = [], None, None
    if adapter in ("adalora", "paca"):  # baselines: adapter_methods builds them
        from .adapter_methods import setup_adapter

        setup = setup_adapter(adapter, net, names, cfg, rank=r_max, alpha=alpha, dropout=dropout, seed=config.seed,
                              qa_weights=qa, tokenizer=tokenizer, examples=task_obj.train, max_length=config.max_length)
        callbacks, objective = list(setup.callbacks), setup.objective
    else:
        add_lora(net, names, r=r_max, alpha=alpha, dropout=dropout, seed=config.seed, rank_space=space,
                 sparse=sparse_adapter, quant_aware=quant_aware, qa_weights=qa)
    if space is not None:
        from .nas import ElasticSampler
        from .nas.lonas import build_space

        elastic = build_space(net, names, space, groups, width_dims)
        callbacks.append(ElasticSampler(net, elastic, seed=config.seed, rule=cfg.sampler))
    checkpoints = out.parent / f".{out.name}.checkpoints"
    metrics = train(net, tokenizer, task_obj.train, config, checkpoints, callbacks=callbacks, fresh=overwrite,
                    add_eos=task_obj.kind == "generation", progress=progress,
                    run_key={"model": str(model), "distill": distill.model_dump() if distill.teacher else None},
                    objective=objective)
    if setup is not None:
        metrics.update(setup.metrics())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if elastic is not None:
        from .nas.lonas import training_metrics

        metrics.update(training_metrics(net, elastic, callbacks[0].history))
    if not is_main_process():  # under torchrun rank 0 writes the artifact; the others wait until it is complete
        barrier()
        return out
    with atomic_dir(out, overwrite) as tmp:
        if setup is not None and setup.save is not None:
            setup.save(tmp, str(model))
        else:
            save_adapter(net, tmp, base_model_name_or_path=str(model))
        if elastic is not None:
            elastic.save(tmp)
            callbacks[0].save_checkpoint(tmp)
        if orders:
            from .nas.reorder import save_order

            save_order(tmp, width_dims, orders, cfg.width_order)
        write_manifest(
            tmp, stage="finetune", method=method_name("lonas" if cfg.widths else adapter, sparse_adapter, quant_aware),
            config={**cfg.record(), "model": str(model), "task": task_obj.spec, "targets": names, "rank": r_max,
                    "rank_space": space, "groups": groups if space else None, "dropout": dropout,
                    "sparse": sparse_adapter, "qa_weights": qa_weights,
                    "float_base": str(float_base) if float_base else None, "train": config.model_dump()},
            inputs={k: v for k, v in (("model", model), ("teacher", distill.teacher)) if v and Path(str(v)).exists()}
            or None,
            metrics={**metrics, "adapter_parameters": trainable, "adapted_modules": len(adapter_layers(net)),
                     "base_zero_fraction": zeros},
            started=started, seed=config.seed,
            lineage=lineage.combine(lineage.of(model), lineage.of(distill.teacher),
                                    [lineage.record("finetune", "train", task_obj, "train", task_obj.train, out)]),
        )
    shutil.rmtree(checkpoints, ignore_errors=True)
    barrier()
    return out
