"""Generation accuracy: greedy batched generation, cut at the task's stop strings, scored
with the task's own scorer."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data.tasks import Example, Task
from ..errors import ConfigError, DataError
from ._common import check_batch_size, model_device, pad_id


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest stop string."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


class _StopStrings(StoppingCriteria):
    """Marks a row finished once its generated text contains a stop string (generate then
    pads it), so a batch ends as soon as every row has stopped."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
             batch_size: int = 8, progress: bool = True) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at the stop strings."""
    check_batch_size(batch_size)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    device, pad = model_device(model), pad_id(tokenizer)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every row's last prompt token sits at the same position
    outputs: list[str] = []
    try:
        batches = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
            enc = tokenizer(batch, return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            width = ids.shape[1]
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None,  # greedy, whatever the model's defaults
                    pad_token_id=pad,
                    stopping_criteria=StoppingCriteriaList([_StopStrings(tokenizer, stop, width)]),
                )
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            outputs.extend(cut_at_stop(t, stop) for t in texts)
    finally:
        tokenizer.padding_side = old_side
    return outputs


def generation_accuracy(model, tokenizer, task: Task, examples: Sequence[Example], batch_size: int = 8,
                        max_new_tokens: int | None = None, progress: bool = True, samples: int = 3) -> dict:
    """Mean of task.score(prediction, example); `samples` predictions are kept for inspection."""
    if task.score is None:
        raise ConfigError(f"task {task.name} has no scorer; generation accuracy needs one")
    examples = list(examples)
    if not examples:
        raise DataError("no examples to evaluate")
    preds = generate(model, tokenizer, [ex.prompt for ex in examples],
                     task.max_new_tokens if max_new_tokens is None else max_new_tokens, task.stop, batch_size, progress)
    scores = [float(task.score(p, ex)) for p, ex in zip(preds, examples)]
    return {
        "accuracy": sum(scores) / len(scores),
        "n": len(examples),
        "scores": scores,  # per example, in order (paired comparisons and intervals)
        "samples": [{"prompt": ex.prompt, "prediction": p, "target": ex.target, "score": s}
                    for ex, p, s in list(zip(examples, preds, scores))[:samples]],
    }
