"""Multiple-choice accuracy from log-likelihoods, defined exactly as lm-eval defines it.

Each choice is scored as a continuation of the prompt: the sum of the log-probabilities of its
tokens. acc picks the highest sum; acc_norm divides each sum by the length of the choice
string in characters (lm-eval's `acc_norm` uses len(choice), not bytes; its `acc_bytes` is
the byte version). Tokenization follows lm-eval's HFLM: trailing whitespace of the prompt
moves to the continuation, the whole string and the context are encoded with the
tokenizer's default special tokens, and the continuation is whole[len(context):].
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.tasks import Example
from ..errors import DataError
from ._common import check_batch_size, model_device, pad_id, right_pad


def _prefix_token_id(tokenizer) -> int:
    # lm-eval's HFLM.prefix_token_id: BOS, else EOS; used as the context of an empty prompt.
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    # lm-eval's HFLM.tok_encode: default special tokens, except no second BOS when the text
    # already starts with the prefix token's string.
    prefix = _prefix_token_id(tokenizer)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's HFLM computes them for a causal LM."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                   max_length: int | None = None, progress: bool = True) -> list[float]:
    """Sum of log-probabilities of each continuation given its context (one forward per pair).

    Inputs longer than max_length (default: the model's context) are cut from the left, as
    lm-eval does.
    """
    check_batch_size(batch_size)
    max_length = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
    items = []
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise DataError(f"continuation {continuation!r} of pair {i} encodes to no tokens")
        if len(cont) > max_length:
            raise DataError(f"continuation of pair {i} has {len(cont)} tokens, more than max_length={max_length}")
        inp = (ctx + cont)[-(max_length + 1):][:-1]  # the last token is only a target
        items.append((i, inp, cont))
    # Longest first, as lm-eval does: similar lengths share a batch, so little padding.
    items.sort(key=lambda it: -len(it[1]))
    out = [0.0] * len(items)
    device, pad = model_device(model), pad_id(tokenizer)
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    with torch.inference_mode():
        for batch in tqdm(batches, desc="choices", unit="batch", disable=not progress):
            ids, mask = right_pad([inp for _, inp, _ in batch], pad)
            # Only the continuation positions need logits: skipping the rest saves most of the
            # LM-head work (49k-word vocabulary) when prompts are long and answers short.
            keep = sorted({p for _, inp, cont in batch for p in range(len(inp) - len(cont), len(inp))})
            kwargs = {"logits_to_keep": torch.tensor(keep, device=device)} if keeps_logits else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
            column = {p: (j if keeps_logits else p) for j, p in enumerate(keep)}
            for row, (i, inp, cont) in enumerate(batch):
                n = len(inp)
                cols = [column[p] for p in range(n - len(cont), n)]
                logp = torch.log_softmax(logits[row, cols].float(), dim=-1)
                target = torch.tensor(cont, device=logp.device).unsqueeze(-1)
                out[i] = logp.gather(-1, target).sum().item()
    return out


def multiple_choice(model, tokenizer, examples: Sequence[Example], batch_size: int = 8,
                    progress: bool = True, max_length: int | None = None) -> dict:
    """acc and acc_norm over examples with prompt, choices and label."""
    examples = list(examples)
    if not examples:
        raise DataError("no examples to evaluate")
    pairs, owners = [], []
    for k, ex in enumerate(examples):
        if not ex.choices or ex.label is None or not 0 <= ex.label < len(ex.choices):
            raise DataError(f"example {k} is not a multiple-choice example with a valid label: {ex.prompt[:60]!r}")
        for choice in ex.choices:
            pairs.append((ex.prompt, choice))
            owners.append(k)
    lls = loglikelihoods(model, tokenizer, pairs, batch_size, max_length, progress)

    per_example: list[list[float]] = [[] for _ in examples]
    for k, ll in zip(owners, lls):
        per_example[k].append(ll)
    preds, preds_norm = [], []
    for ex, ll in zip(examples, per_example):
        ll = np.array(ll)
        lengths = np.array([float(len(c)) for c in ex.choices])
        preds.append(int(np.argmax(ll)))  # np.argmax: ties go to the first choice, as in lm-eval
        preds_norm.append(int(np.argmax(ll / lengths)))
    labels = [ex.label for ex in examples]
    return {
        "acc": float(np.mean([p == y for p, y in zip(preds, labels)])),
        "acc_norm": float(np.mean([p == y for p, y in zip(preds_norm, labels)])),
        "n": len(examples),
        "predictions": preds,
        "predictions_norm": preds_norm,
        "loglikelihoods": per_example,
    }
