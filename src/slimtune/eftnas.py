"""EFTNAS stages (api re-exports them): `importance` and `space`.

  importance  first-order scores of heads and FFN neurons (nas/importance.py) from forward/backward
              passes over a task's training split: a sequence classifier on its labels (encoders), a
              causal LM on its completions (decoders); writes importance.json with a manifest
  space       the model reordered by importance (nas/reorder.py: output-identical, every sub-network a
              prefix) and its search space from N budgets (nas/budgets.py): the reordered HF model,
              importance.json in the new order, elastic_config.json (the SearchSpace over head and
              MLP-width dimensions) and eftnas_space.json (per budget: widths, cost, error)

Full fine-tuning of an encoder collects importance during training instead (finetune --importance).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import lineage
from .artifacts import Artifact, atomic_dir, check_output_dir, write_manifest
from .configs import ImportanceConfig, SpaceConfig
from .data import DEFAULT_TASK
from .errors import ConfigError
from .models import load_model

SPACE_FILE = "eftnas_space.json"


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
                            tolerance=cfg.tolerance, seq_len=cfg.seq_len)
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
                                "dimensions": len(result["space"])},
                       started=started,
                       lineage=lineage.combine(lineage.of(model), lineage.of(imp_dir) if imp_dir else []))
    return out, result
