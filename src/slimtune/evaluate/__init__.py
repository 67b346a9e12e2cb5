"""Evaluation: perplexity, multiple-choice log-likelihood accuracy, generation accuracy, and a
bridge to lm-eval (an optional extra) for cross-checking."""

from __future__ import annotations

import math
import time

from ..architectures import require_causal_lm
from ..data.registry import load_task
from ..data.tasks import Task
from ..errors import ConfigError, NonFiniteError
from .choice import multiple_choice
from .classification import classification_accuracy, is_sequence_classifier
from .generation import generation_accuracy
from .intervals import grouped, macro_ci, mean_ci
from .perplexity import check_perplexity_args, perplexity


# Per-example lists of a result: kept in results files, left out of printed summaries and manifests.
PER_EXAMPLE = ("samples", "predictions", "ids", "scores", "members", "clusters")


def with_intervals(task: Task, examples, scores: list[float], key: str) -> dict:
    """Per-example ids and scores, the headline's bootstrap interval (`<key>_ci`) and, for a suite,
    each member's accuracy and interval and their macro average (`average`, `average_ci`). Examples
    that carry meta["cluster"] (gsm_symbolic: their template) are resampled by cluster."""
    clusters = [ex.meta.get("cluster") for ex in examples]
    clusters = clusters if clusters and all(c is not None for c in clusters) else None
    out = {"ids": [ex.id for ex in examples], "scores": scores,
           f"{key}_ci": mean_ci(scores, clusters=clusters)["ci"], **({"clusters": clusters} if clusters else {})}
    if task.members:
        members = [ex.meta.get("task", task.spec) for ex in examples]
        by_member = None
        if clusters:
            by_member = {}
            for m, c in zip(members, clusters):
                by_member.setdefault(m, []).append(c)
        r = macro_ci(grouped(scores, members), clusters=by_member)
        order = [m for m in task.members if m in r["per_task"]] + [m for m in r["per_task"] if m not in task.members]
        out |= {"members": members, "per_task": {m: {"n": r["per_task"][m]["n"], "acc": r["per_task"][m]["mean"],
                                 "acc_ci": r["per_task"][m]["ci"]} for m in order},
                "average": r["mean"], "average_ci": r["ci"]}
    return out


def check_finite_scores(loglikelihoods) -> None:
    """Multiple-choice log-likelihoods must be finite: argmax over nan picks the first choice, which would
    pass for an accuracy."""
    bad = sum(1 for ll in loglikelihoods if not all(math.isfinite(x) for x in ll))
    if bad:
        raise NonFiniteError(f"the model's log-likelihoods are not finite (nan or inf) on {bad} of "
                             f"{len(loglikelihoods)} examples: its weights or an adapter hold nan or inf values, so "
                             "there is no accuracy to report")


def check_finite_outputs(model, tokenizer, prompt: str) -> None:
    """One forward pass over a prompt must give finite logits (generation would decode nan as token 0)."""
    import torch

    from ._common import model_device

    ids = tokenizer(prompt or "a", return_tensors="pt")["input_ids"].to(model_device(model))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        raise NonFiniteError("the model's outputs are not finite (nan or inf): its weights or an adapter hold nan or "
                             "inf values, so there is no accuracy to report")


def evaluate_model(model, tokenizer, task: Task | str | None = None, split: str = "test",
                   limit: int | None = None, text: str | None = None, seq_len: int = 512,
                   max_windows: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """Task accuracy and/or perplexity in one JSON-serialisable dict.

    Multiple-choice tasks give acc and acc_norm (lm-eval's definitions), generation tasks give
    accuracy (mean of the task's scorer); a sequence classifier (an encoder with its head) gives acc
    over the task's label set (evaluate/classification.py); either comes with its 95% bootstrap interval (acc_ci or
    accuracy_ci) and the per-example `ids` and `scores` (1/0 correctness for multiple choice, the
    scorer's value for generation) that a paired comparison needs. A suite (a task with members) adds
    `per_task` {member: {n, acc, acc_ci}} and their macro `average` with `average_ci` (resampled
    within members). `text` adds perplexity over non-overlapping windows.
    """
    if task is None and text is None:
        raise ConfigError("evaluate_model needs a task, a text for perplexity, or both")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    classifier = is_sequence_classifier(model)
    if classifier and text is not None:
        raise ConfigError("perplexity needs a causal language model; this is a sequence classifier")
    if not classifier:
        require_causal_lm(model, "evaluate")
    if text is not None:  # its cheap checks before the task is scored
        check_perplexity_args(model, seq_len, None, max_windows, max(1, min(batch_size, 4)))
    start = time.perf_counter()
    out: dict = {}
    if task is not None:
        task = load_task(task) if isinstance(task, str) else task
        examples = task.split(split)[:limit]
        out |= {"task": task.name, "kind": task.kind, "split": split}
        if classifier:  # an encoder with its head: argmax of the logits over the task's label set
            r = classification_accuracy(model, tokenizer, task, examples, batch_size=batch_size)
            out |= {"n": r["n"], "acc": r["acc"], "predictions": r["predictions"]}
            scores = r["scores"]
        elif task.kind == "multiple_choice":
            r = multiple_choice(model, tokenizer, examples, batch_size=batch_size, progress=progress)
            check_finite_scores(r["loglikelihoods"])
            out |= {"n": r["n"], "acc": r["acc"], "acc_norm": r["acc_norm"]}
            scores = [float(p == ex.label) for p, ex in zip(r["predictions"], examples)]
        else:
            check_finite_outputs(model, tokenizer, examples[0].prompt if examples else "")
            r = generation_accuracy(model, tokenizer, task, examples, batch_size=batch_size, progress=progress)
            out |= {"n": r["n"], "accuracy": r["accuracy"], "samples": r["samples"]}
            scores = [float(s) for s in r["scores"]]
        out |= with_intervals(task, examples, scores, "acc" if task.kind == "multiple_choice" else "accuracy")
    if text is not None:
        # Perplexity windows are long; a smaller batch keeps the fp32 logits in memory bounds.
        r = perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                       batch_size=max(1, min(batch_size, 4)), progress=progress)
        out |= {"perplexity": r["perplexity"], "nll": r["nll"], "perplexity_tokens": r["tokens_scored"],
                "perplexity_windows": r["windows"], "seq_len": seq_len}
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


__all__ = ["evaluate_model", "perplexity", "multiple_choice", "generation_accuracy", "with_intervals"]
