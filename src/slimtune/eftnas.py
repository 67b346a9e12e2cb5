"""EFTNAS stages (api re-exports them): `importance`, `space` and `supernet`; `extract_elastic` is the
`extract` stage for a whole model with elastic widths (api.extract hands a supernet / space to it).

  importance  first-order scores of heads and FFN neurons (nas/importance.py) from forward/backward
              passes over a task's training split: a sequence classifier on its labels (encoders), a
              causal LM on its completions (decoders); writes importance.json with a manifest
  space       the model reordered by importance (nas/reorder.py: output-identical, every sub-network a
              prefix) and its search space from N budgets (nas/budgets.py): the reordered HF model,
              importance.json in the new order, elastic_config.json (the SearchSpace over head and
              MLP-width dimensions) and eftnas_space.json (per budget: widths, cost, error); with skip,
              the skip candidates' choices end in 0 (the sub-block skipped: skipping.py)
  supernet    the super-network trained from a space and a teacher (default: the space's own model, the
              reordered teacher, output-identical to it): every weight, [maximal, random, minimal]
              configurations per optimizer step (sandwich rule), each loss a·CE + (1-a)·T²·KL(teacher ‖
              student) (EFTNAS: a = 0.1, T = 2) through train.Objective with reduction 'sum' (sampler
              'budgets': the middle configuration drawn from the space's intermediate budgets). Encoder
              classifiers (classify.supernet) and causal LMs (completion tokens, the same objective on
              next-token logits). Writes the model at full width with elastic_config.json,
              eftnas_space.json, importance.json and the sampled history; lineage records the training
              examples. `search` then measures its sub-networks (nas.elastic_model) and `extract` cuts one
              into a physically smaller model (widths_io records what no stock config describes).

Full fine-tuning of an encoder collects importance during training instead (finetune --importance).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import lineage
from .artifacts import Artifact, atomic_dir, check_output_dir, write_manifest
from .configs import ImportanceConfig, SpaceConfig, SupernetConfig
from .data import DEFAULT_TASK
from .errors import ConfigError
from .models import load_model
from .nas.elastic_model import SPACE_FILE


def _batches(net, tokenizer, task, examples, cfg: ImportanceConfig):
    from .evaluate.classification import is_sequence_classifier

    if is_sequence_classifier(net):
        from .classify.data import ClassificationDataset, LabelCollator, classification_view
        from .classify.model import classifier_labels

        view = classification_view(task, classifier_labels(net))
        dataset, collator = ClassificationDataset(view, examples, tokenizer, cfg.max_length), \
            LabelCollator(tokenizer.pad_token_id)
    else:
        from .architectures import require_causal_lm
        from .train import ExampleDataset, PadCollator

        require_causal_lm(net, "importance (an encoder needs its classification head: fine-tune it first)")
        dataset = ExampleDataset(examples, tokenizer, cfg.max_length, add_eos=task.kind == "generation")
        collator = PadCollator(tokenizer.pad_token_id)
    items = [dataset[i] for i in range(len(dataset))]
    return [collator(items[i:i + cfg.batch_size]) for i in range(0, len(items), cfg.batch_size)]


def importance(model: str | Path, *, out: str | Path, config: ImportanceConfig | dict | None = None,
               overwrite: bool = False, progress: bool = True, **options: Any) -> Path:
    """Importance of the model's heads and FFN neurons on a task's training split, written to `out`
    (importance.json + manifest). Options: configs.ImportanceConfig, as `config` or keywords."""
    from .nas.importance import collect_importance

    started = time.time()
    out = check_output_dir(out, overwrite)
    cfg = ImportanceConfig.build(config, options)
    artifact = Artifact.find(model)
    history = lineage.of(model)
    task = lineage.task_split(cfg.task or (artifact.task if artifact else None) or DEFAULT_TASK, cfg.split_seed,
                              history)
    examples = task.train[:cfg.limit]
    if not examples:
        raise ConfigError(f"task {task.spec} has no training examples to score importance on")
    net, tokenizer = load_model(model)
    scores = collect_importance(net, _batches(net, tokenizer, task, examples, cfg), source=f"passes:{task.spec}")
    with atomic_dir(out, overwrite) as tmp:
        scores.save(tmp)
        write_manifest(tmp, stage="importance", method="movement",
                       config={**cfg.record(), "model": str(model), "task": task.spec},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"batches": scores.steps, "examples": len(examples),
                                "dimensions": len(scores.scores)},
                       started=started,
                       lineage=lineage.combine(history, [lineage.record("importance", "select", task, "train",
                                                                        examples, out)]))
    return out


def space(model: str | Path, *, out: str | Path, importance: str | Path | None = None,
          config: SpaceConfig | dict | None = None, overwrite: bool = False, progress: bool = True,
          **options: Any) -> tuple[Path, dict]:
    """The model reordered by importance, with its EFTNAS search space, written to `out`; returns (out, the
    space result: budgets and per-dimension choices). `importance`: an importance.json or a directory
    holding one (default: the model's own, written by finetune --importance). Options: configs.SpaceConfig.
    (`progress` is accepted for the recipe runner's uniform call; nothing here reports progress.)"""
    from .nas.budgets import generate_space
    from .nas.importance import Importance, space_from_widths
    from .nas.reorder import reorder_model

    started = time.time()
    out = check_output_dir(out, overwrite)
    cfg = SpaceConfig.build(config, options)
    scores = Importance.load(importance if importance is not None else model)
    net, tokenizer = load_model(model)
    if cfg.reorder:
        scores = reorder_model(net, scores)
    result = generate_space(net, scores, budgets=cfg.budgets, min_fraction=cfg.min_fraction, metric=cfg.metric,
                            tolerance=cfg.tolerance, seq_len=cfg.seq_len, skip_fraction=cfg.skip_fraction,
                            skip=cfg.skip)
    searchable = space_from_widths(net, result["space"])
    imp_dir = None if importance is None else (Path(importance) if Path(importance).is_dir()
                                               else Path(importance).parent)
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        scores.save(tmp)
        searchable.save(tmp)
        (tmp / SPACE_FILE).write_text(json.dumps(result, indent=1) + "\n")
        write_manifest(tmp, stage="space", method="eftnas",
                       config={**cfg.record(), "model": str(model),
                               "importance": str(importance) if importance is not None else None},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"full": result["full"], "metric": result["metric"],
                                "budgets": [{k: r[k] for k in ("fraction", "cost", "relative_error")}
                                            for r in result["budgets"]],
                                "dimensions": len(result["space"]), "skip_candidates": result["skip_candidates"],
                                "skippable": len(result["skip_candidates"]) if cfg.skip else 0},
                       started=started,
                       lineage=lineage.combine(lineage.of(model), lineage.of(imp_dir) if imp_dir else []))
    return out, result


def _training_task(history: list[dict]) -> str:
    return next((rec["task"] for rec in history if rec["use"] == "train"), DEFAULT_TASK)


def _train_decoder_supernet(space_dir, teacher, task, config, checkpoints, progress, cfg: SupernetConfig, targets):
    """The causal-LM form of classify.supernet.train_supernet: every weight, the sampler's configurations per
    step, distillation on the completion tokens' next-token distributions."""
    from .distill import load_teacher
    from .nas import ElasticSampler, SearchSpace
    from .train import Objective, train

    net, tokenizer = load_model(space_dir)
    teacher_net = load_teacher(teacher, net)
    space = SearchSpace.load(space_dir)
    for p in net.parameters():
        p.requires_grad_(True)
    sampler = ElasticSampler(net, space, seed=config.seed, rule=cfg.sampler, targets=targets)
    objective = Objective(sampler=sampler, reduction="sum", teacher=teacher_net, alpha=cfg.alpha,
                          temperature=cfg.temperature)
    metrics = train(net, tokenizer, task.train, config, checkpoints, add_eos=task.kind == "generation",
                    callbacks=[sampler], objective=objective, progress=progress, fresh=True,
                    run_key={"supernet": str(space_dir), "teacher": str(teacher)})
    for p in net.parameters():
        p.requires_grad_(False)
    space.apply(net, space.maximal())
    metrics["sampled"] = sampler.history
    return net, tokenizer, space, metrics


def supernet(space_dir: str | Path, *, out: str | Path, teacher: str | Path | None = None,
             config: SupernetConfig | dict | None = None, overwrite: bool = False, progress: bool = True,
             **options: Any) -> Path:
    """Train the EFTNAS super-network of a `space` output, distilled from `teacher` (default: the space's own
    model, the reordered teacher), and write it to `out` (module docstring). Options: configs.SupernetConfig,
    and training settings (train.TrainConfig) as keywords too."""
    import shutil

    from .classify.model import is_classifier
    from .nas import SearchSpace
    from .nas.elastic_model import budget_targets, is_elastic_model
    from .nas.importance import IMPORTANCE_FILE
    from .nas.sampling import HISTORY_FILE, TARGETED_SAMPLERS
    from .train import TrainConfig, barrier, build_full_train_config, is_main_process

    started = time.time()
    out = check_output_dir(out, overwrite)
    train_overrides = {k: options.pop(k) for k in list(options) if k in TrainConfig.model_fields}  # as finetune's
    cfg = SupernetConfig.build(config, options)
    if not is_elastic_model(space_dir):
        raise ConfigError(f"{space_dir} is not a model with an elastic search space (config.json + "
                          "elastic_config.json, no adapter): give the output of `slimtune space`")
    targets = None
    if cfg.sampler in TARGETED_SAMPLERS:
        targets = budget_targets(space_dir, SearchSpace.load(space_dir))
        if not targets:
            raise ConfigError(f"sampler {cfg.sampler!r} trains the space's budgets between its smallest and its full "
                              f"configuration, and {space_dir} records none (its {SPACE_FILE} is missing or holds "
                              "two budgets or fewer): build the space with three or more budgets, or use sampler "
                              "sandwich")
    teacher = space_dir if teacher is None else teacher
    train_config = build_full_train_config(cfg.train, **train_overrides)
    history = lineage.combine(lineage.of(space_dir), lineage.of(teacher))
    task = lineage.task_split(cfg.task or _training_task(history), cfg.split_seed, history)
    if not task.train:
        raise ConfigError(f"task {task.spec} has no training examples (split seed {task.split_seed})")
    from transformers import AutoConfig

    from .architectures import is_causal_config

    model_config = AutoConfig.from_pretrained(space_dir)
    classifier = is_classifier(model_config)
    if not classifier and not is_causal_config(model_config):
        raise ConfigError(f"{space_dir} is an encoder without a classification head: the super-network of an encoder "
                          "is a classifier; fine-tune the teacher (finetune --adapter full) and build the space from it")
    checkpoints = out.parent / f".{out.name}.checkpoints"
    if classifier:
        from .classify.supernet import train_supernet

        net, tokenizer, space, metrics = train_supernet(space_dir, teacher, task, train_config, checkpoints,
                                                        progress, cfg.alpha, cfg.temperature, rule=cfg.sampler,
                                                        targets=targets)
    else:
        net, tokenizer, space, metrics = _train_decoder_supernet(space_dir, teacher, task, train_config,
                                                                 checkpoints, progress, cfg, targets)
    sampled = metrics.pop("sampled")
    if not is_main_process():
        barrier()
        return out
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        space.save(tmp)
        for name in (SPACE_FILE, IMPORTANCE_FILE):
            if (Path(space_dir) / name).is_file():
                shutil.copyfile(Path(space_dir) / name, tmp / name)
        (tmp / HISTORY_FILE).write_text(json.dumps(sampled) + "\n")
        write_manifest(tmp, stage="supernet", method=f"eftnas-{cfg.sampler}",
                       config={**cfg.record(), "model": str(space_dir), "teacher": str(teacher), "task": task.spec,
                               "classifier": classifier, "train": train_config.model_dump()},
                       inputs={"model": space_dir, **({"teacher": teacher} if Path(str(teacher)).exists() else {})},
                       metrics={**metrics, "configurations_trained": len(sampled),
                                "dimensions": len(space.dimensions),
                                "parameters": sum(p.numel() for p in net.parameters())},
                       started=started, seed=train_config.seed,
                       lineage=lineage.combine(history, [lineage.record("supernet", "train", task, "train",
                                                                        task.train, out)]))
    shutil.rmtree(checkpoints, ignore_errors=True)
    barrier()
    return out


def extract_elastic(source: str | Path, *, out: Path, select, cfg, history: list[dict], overwrite: bool = False,
                    picked: dict | None = None, started: float | None = None) -> Path:
    """extract for a whole model with elastic widths (a supernet or space): the configuration `select` (a
    heuristic name or a {dimension: width} dict; with `picked`, a searched trial) cut into a physically smaller
    model; its per-module shapes are recorded (widths_io) when no stock config describes them."""
    from .nas import SearchSpace, parse_selection
    from .nas.elastic_model import cost_functions, extract_model, kept_heads, space_record
    from .widths_io import write_widths

    started = started or time.time()
    space = SearchSpace.load(source)
    label, chosen = parse_selection(space, select)
    if chosen is None:
        raise ConfigError("select nncf scores an adapter's training history; for an elastic-width model pick a "
                          "searched trial (--from-search with --pick, e.g. budget=0.5) or give maximal, median, "
                          "minimal or a {dimension: width} configuration")
    if picked is not None:
        label = f"search:{cfg.pick or 'knee'}:trial={picked['trial']}"
    net, tokenizer = load_model(source)
    record = space_record(source)
    costs = cost_functions(net, space, record.get("seq_len") or 128)
    sub, shapes = extract_model(net, space, chosen)
    full = {m: costs[m](space.maximal()) for m in ("params", "macs")}
    kept = {m: costs[m](chosen) for m in ("params", "macs")}
    with atomic_dir(out, overwrite) as tmp:
        sub.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if shapes:
            write_widths(tmp, shapes, kept_heads(net, space, chosen))
        write_manifest(tmp, stage="extract", method=label,
                       config={**cfg.record(), "model": str(source), "selection": label, "widths": chosen},
                       inputs={"model": source},
                       metrics={"parameters": sum(p.numel() for p in sub.parameters()),
                                "full_parameters": sum(p.numel() for p in net.parameters()),
                                "params_fraction": kept["params"] / full["params"], "macs": kept["macs"],
                                "full_macs": full["macs"], "macs_fraction": kept["macs"] / full["macs"],
                                "macs_seq_len": record.get("seq_len") or 128, "per_block_widths": bool(shapes),
                                **({"search_objectives": picked["objectives"]} if picked is not None else {})},
                       started=started, lineage=history)
    return out
