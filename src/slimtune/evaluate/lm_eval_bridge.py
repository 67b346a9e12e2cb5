"""Run EleutherAI's lm-evaluation-harness on a slimtune task and an in-memory model, offline.

The task's examples go to a local JSONL file and a task YAML (`dataset_path: json`) in a
work directory that lm-eval reads through `include_path`; its built-in tasks would need the
hub. The model is the loaded nn.Module itself, wrapped in lm-eval's HFLM, so adapters
(LoraLinear) and packed INT4 layers (QuantLinear) are evaluated exactly as slimtune runs them.

Multiple choice uses lm-eval's standard target_delimiter " " with unspaced choices: slimtune's
choices carry that delimiter as their one leading space (" negative"), which moves into
target_delimiter ("negative"). A choice without a leading space after a prompt ending in a space
("Answer: " + "yes") becomes "Answer:" + " " + "yes", the same text. lm-eval then scores the
same strings and divides by the same lengths for acc_norm as slimtune (choice.choice_length).
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..data.tasks import Example, Task
from ..errors import ConfigError, DataError


def _import_lm_eval():
    # Offline before the hub libraries read their settings at import time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(f"lm-eval is not installed ({e}); install it with `pip install slimtune[lm-eval]`") from e
    return lm_eval, TaskManager


_DELIM = " "


def _split_delimiter(k: int, ex: Example) -> tuple[str, list[str]]:
    """(prompt, choices) with one space moved out into target_delimiter " " (same text)."""
    if all(c.startswith(_DELIM) for c in ex.choices):
        return ex.prompt, [c[len(_DELIM):] for c in ex.choices]
    if not any(c.startswith(_DELIM) for c in ex.choices) and ex.prompt.endswith(_DELIM):
        return ex.prompt[:-len(_DELIM)], list(ex.choices)
    raise DataError(
        f"example {k} cannot be written with lm-eval's target_delimiter ' ': its choices "
        f"{list(ex.choices)!r} must all start with one space, or none of them and the prompt must end "
        f"with one (prompt ends {ex.prompt[-20:]!r}); slimtune's multiple-choice format puts the space "
        "at the start of every choice (data.formats.multiple_choice)")


def mc_docs(examples: list[Example]) -> tuple[list[dict], str]:
    """lm-eval documents and target_delimiter for multiple-choice examples.

    " " with unspaced choices (lm-eval's standard) when every example allows it; "" when no choice
    of any example starts with a space (then nothing to move: acc_norm counts the whole choice,
    as slimtune does). A task mixing the two cannot be written exactly: DataError.
    """
    if not any(c.startswith(_DELIM) for ex in examples for c in ex.choices) \
            and not all(ex.prompt.endswith(_DELIM) for ex in examples):
        return [{"prompt": ex.prompt, "choices": list(ex.choices), "label": ex.label} for ex in examples], ""
    docs = []
    for k, ex in enumerate(examples):
        prompt, choices = _split_delimiter(k, ex)
        docs.append({"prompt": prompt, "choices": choices, "label": ex.label})
    return docs, _DELIM


def _docs(task: Task, examples: list[Example]) -> tuple[list[dict], str]:
    if task.kind == "multiple_choice":
        return mc_docs(examples)
    return [{"prompt": ex.prompt, "target": ex.target or "", "idx": i} for i, ex in enumerate(examples)], ""


def write_task(task: Task, examples: list[Example], work_dir: str | os.PathLike, split: str = "test") -> str:
    """Write <work_dir>/<name>.jsonl and <name>.yaml; return the lm-eval task name."""
    import yaml

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = "slimtune_" + re.sub(r"[^A-Za-z0-9_]+", "_", f"{task.name}_{split}")
    data = work / f"{name}.jsonl"
    docs, delimiter = _docs(task, examples)
    with open(data, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    config = {
        "task": name,
        "dataset_path": "json",
        # cache_dir keeps the converted dataset inside the work dir, not in ~/.cache.
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(work / "datasets_cache")},
        "test_split": "test",
        "doc_to_text": "prompt",  # a column name: lm-eval returns the field verbatim (no template)
        "target_delimiter": delimiter,
        "num_fewshot": 0,
    }
    if task.kind == "multiple_choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
        }
    else:
        # lm-eval generates (greedy, cut at the stop strings); slimtune's scorer judges the
        # logged outputs afterwards, because a Python scorer cannot travel in a YAML file.
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "target",
            "generation_kwargs": {"until": list(task.stop), "max_gen_toks": task.max_new_tokens,
                                  "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return name


def _lm(model, tokenizer, batch_size: int, max_length: int):
    """lm-eval's HFLM around the loaded model (not a path: lm-eval would reload it without
    slimtune's adapters and INT4 layers). The tokenizer is a copy: HFLM may set its pad token."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise ConfigError("run_lm_eval needs the tokenizer with an in-memory model: run_lm_eval(model, task, tokenizer=tok)")
    if not hasattr(model, "config") or not hasattr(model, "device"):
        raise ConfigError(f"run_lm_eval needs a transformers model (with .config and .device), got {type(model).__name__}")
    return HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), max_length=max_length, batch_size=batch_size)


def run_lm_eval(model, task: Task, split: str = "test", limit: int | None = None,
                batch_size: int = 8, max_length: int = 512, work_dir: str | os.PathLike | None = None,
                device: str | None = None, tokenizer=None) -> dict:
    """lm-eval's numbers for `task` on a model: {"acc","acc_norm","n",...} for multiple-choice
    tasks, {"accuracy","n",...} for generation tasks.

    `model` is a loaded model (pass its `tokenizer`) or a model spec/directory, which
    slimtune.models.load_model loads (fp32, on `device`). Multiple choice also returns
    per-example "loglikelihoods", "predictions" and "predictions_norm" (argmax as lm-eval takes
    it, with its completion lengths), and lm-eval's own per-example "correct"/"correct_norm";
    generation returns "predictions". All in example order, for comparison with slimtune's own
    evaluators.
    """
    lm_eval, TaskManager = _import_lm_eval()
    examples = task.split(split)[:limit] if limit is not None else task.split(split)
    if not examples:
        raise DataError(f"task {task.name} has no {split} examples to evaluate")
    if isinstance(model, (str, os.PathLike)):
        from ..models import load_model

        model, tokenizer = load_model(model, device=device)
    was_training = model.training
    try:
        lm = _lm(model, tokenizer, batch_size, max_length)
        with tempfile.TemporaryDirectory(prefix="slimtune-lm-eval-") as tmp:
            work = Path(work_dir) if work_dir is not None else Path(tmp)
            name = write_task(task, examples, work, split)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=[name],
                # Only our task: indexing lm-eval's thousands of built-in task files takes seconds.
                task_manager=TaskManager(include_path=str(work), include_defaults=False),
                log_samples=True,
                bootstrap_iters=0,  # no stderr bootstrap: slow and unused here
            )
    finally:
        model.train(was_training)  # HFLM puts the model in eval mode
    if results is None:  # only non-zero ranks of a distributed run get None
        raise ConfigError("lm-eval returned no results (run it in a single process)")
    metrics = results["results"][name]
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    if task.kind == "multiple_choice":
        lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        lengths = [[float(len(c)) for c in s["doc"]["choices"]] for s in samples]  # lm-eval's completion_len
        return {"acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"]),
                "n": len(samples), "loglikelihoods": lls,
                "predictions": [int(np.argmax(x)) for x in lls],
                "predictions_norm": [int(np.argmax(np.array(x) / np.array(n))) for x, n in zip(lls, lengths)],
                "correct": [bool(s["acc"]) for s in samples],
                "correct_norm": [bool(s["acc_norm"]) for s in samples]}
    preds = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
             for s in samples]
    scores = [float(task.score(p, examples[s["doc_id"]])) for p, s in zip(preds, samples)]
    return {"accuracy": sum(scores) / len(scores), "n": len(samples), "predictions": preds}
