"""Evaluation: perplexity, multiple-choice log-likelihood accuracy, generation accuracy, and a
bridge to lm-eval (an optional extra) for cross-checking."""

from __future__ import annotations

import time

from ..data.tasks import Task, load_task
from ..errors import ConfigError
from .choice import multiple_choice
from .generation import generation_accuracy
from .perplexity import perplexity


def evaluate_model(model, tokenizer, task: Task | str | None = None, split: str = "test",
                   limit: int | None = None, text: str | None = None, seq_len: int = 512,
                   max_windows: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """Task accuracy and/or perplexity in one JSON-serialisable dict.

    Multiple-choice tasks give acc and acc_norm (lm-eval's definitions), generation tasks give
    accuracy (mean of the task's scorer); `text` adds perplexity over non-overlapping windows.
    """
    if task is None and text is None:
        raise ConfigError("evaluate_model needs a task, a text for perplexity, or both")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    start = time.perf_counter()
    out: dict = {}
    if task is not None:
        task = load_task(task) if isinstance(task, str) else task
        examples = task.split(split)[:limit]
        out |= {"task": task.name, "kind": task.kind, "split": split}
        if task.kind == "multiple_choice":
            r = multiple_choice(model, tokenizer, examples, batch_size=batch_size, progress=progress)
            out |= {"n": r["n"], "acc": r["acc"], "acc_norm": r["acc_norm"]}
        else:
            r = generation_accuracy(model, tokenizer, task, examples, batch_size=batch_size, progress=progress)
            out |= {"n": r["n"], "accuracy": r["accuracy"], "samples": r["samples"]}
    if text is not None:
        # Perplexity windows are long; a smaller batch keeps the fp32 logits in memory bounds.
        r = perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                       batch_size=max(1, min(batch_size, 4)), progress=progress)
        out |= {"perplexity": r["perplexity"], "nll": r["nll"], "perplexity_tokens": r["tokens_scored"],
                "perplexity_windows": r["windows"], "seq_len": seq_len}
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


__all__ = ["evaluate_model", "perplexity", "multiple_choice", "generation_accuracy"]
