"""Mean completion loss of a task split: the training objective, measured on held-out examples."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.tasks import Example
from ..errors import DataError
from ._common import check_batch_size, model_device


@torch.no_grad()
def completion_loss(model, tokenizer, examples: Sequence[Example], *, max_length: int = 256,
                    add_eos: bool = False, batch_size: int = 8) -> dict:
    """Token-weighted mean cross-entropy of the completions (prompt tokens masked), as in training."""
    from ..train import PadCollator, tokenize_example

    check_batch_size(batch_size)
    items = [tokenize_example(e, tokenizer, max_length, add_eos) for e in examples]
    items = [it for it in items if any(l != -100 for l in it["labels"])]
    if not items:
        raise DataError("no examples with a completion to score")
    collate, device = PadCollator(tokenizer.pad_token_id), model_device(model)
    total, tokens = 0.0, 0
    for i in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate(items[i:i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100,
                                                reduction="sum")
        total += float(nll)
        tokens += int((labels != -100).sum())
    return {"loss": total / tokens, "tokens": tokens, "n": len(items)}
