"""Run EleutherAI's lm-evaluation-harness on a slimtune task, fully offline.

The task's examples go to a local JSONL file and a task YAML (`dataset_path: json`) in a
work directory that lm-eval reads through `include_path`; its built-in tasks would need the
hub. Prompts and choices are slimtune's own strings: slimtune choices carry their leading
space, so target_delimiter is "" and lm-eval scores exactly the continuations slimtune scores.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

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


def _docs(task: Task, examples: list[Example]) -> list[dict]:
    if task.kind == "multiple_choice":
        return [{"prompt": ex.prompt, "choices": list(ex.choices), "label": ex.label} for ex in examples]
    return [{"prompt": ex.prompt, "target": ex.target or "", "idx": i} for i, ex in enumerate(examples)]


def write_task(task: Task, examples: list[Example], work_dir: str | os.PathLike, split: str = "test") -> str:
    """Write <work_dir>/<name>.jsonl and <name>.yaml; return the lm-eval task name."""
    import yaml

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = "slimtune_" + re.sub(r"[^A-Za-z0-9_]+", "_", f"{task.name}_{split}")
    data = work / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for doc in _docs(task, examples):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    config = {
        "task": name,
        "dataset_path": "json",
        # cache_dir keeps the converted dataset inside the work dir, not in ~/.cache.
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(work / "datasets_cache")},
        "test_split": "test",
        "doc_to_text": "prompt",  # a column name: lm-eval returns the field verbatim (no template)
        "target_delimiter": "",
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


def run_lm_eval(model_path: str, task: Task, split: str = "test", limit: int | None = None,
                batch_size: int = 8, max_length: int = 512, work_dir: str | os.PathLike | None = None,
                device: str | None = None) -> dict:
    """lm-eval's numbers for `task` on an HF model directory: {"acc","acc_norm","n",...} for
    multiple-choice tasks, {"accuracy","n",...} for generation tasks.

    Also returns per-example "loglikelihoods" (multiple choice) or "predictions" (generation),
    in example order, for comparison with slimtune's own evaluators.
    """
    lm_eval, TaskManager = _import_lm_eval()
    examples = task.split(split)[:limit] if limit is not None else task.split(split)
    if not examples:
        raise DataError(f"task {task.name} has no {split} examples to evaluate")
    if not Path(model_path).is_dir():
        raise ConfigError(f"run_lm_eval needs a local Hugging Face model directory, got {model_path!r}")
    if device is None:  # lm-eval's own default is "cuda", even on a machine without CUDA
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="slimtune-lm-eval-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        name = write_task(task, examples, work, split)
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_path},dtype=float32,max_length={max_length}",
            tasks=[name],
            # Only our task: indexing lm-eval's thousands of built-in task files takes seconds.
            task_manager=TaskManager(include_path=str(work), include_defaults=False),
            batch_size=batch_size,
            device=device,
            log_samples=True,
            bootstrap_iters=0,  # no stderr bootstrap: slow and unused here
        )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise ConfigError("lm-eval returned no results (run it in a single process)")
    metrics = results["results"][name]
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    if task.kind == "multiple_choice":
        return {"acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"]),
                "n": len(samples),
                "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples]}
    preds = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
             for s in samples]
    scores = [float(task.score(p, examples[s["doc_id"]])) for p, s in zip(preds, samples)]
    return {"accuracy": sum(scores) / len(scores), "n": len(samples), "predictions": preds}
