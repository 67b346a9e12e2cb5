"""Multiple-choice accuracy from log-likelihoods, defined exactly as lm-eval defines it.

Each choice is scored as a continuation of the prompt: the sum of the log-probabilities of its
tokens. acc picks the highest sum; acc_norm divides each sum by the choice's length in
characters WITHOUT its delimiter. lm-eval scores context + target_delimiter + choice and divides
by len(choice) (not bytes: that is its acc_bytes). slimtune's choices carry their delimiter as
one leading space (" negative"), so the length is that of "negative"; a choice without a leading
space has no delimiter and counts whole. The lm-eval bridge writes exactly that split
(target_delimiter " ", unspaced choices).

Tokenization follows lm-eval's HFLM: trailing whitespace of the prompt moves to the
continuation, the whole string and the context are encoded with the tokenizer's default special
tokens, and the continuation is whole[len(context):].

Scoring: for causal LMs that take a custom 4D attention mask (packed.supports_packing), all
choices of an example share one sequence (the prompt computed once, packed.py); an example whose
choices change the prompt's tokenization (the context tokens differ between choices), or that
would need left truncation, takes one forward per (prompt, choice) pair, as does every example
of any other model. Both give the same numbers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.tasks import Example
from ..data.text import prefix_token_id
from ..errors import ConfigError, DataError
from ._common import check_batch_size, model_device, pad_id, right_pad
from .packed import max_row_length, packed_loglikelihoods, supports_packing


DELIMITER = " "  # the one leading space that separates a choice from its prompt


def choice_length(choice: str) -> int:
    """acc_norm's denominator: characters of the choice without its delimiter (lm-eval's
    completion_len = len(choice), with the delimiter in target_delimiter, not in the choice)."""
    return len(choice) - len(DELIMITER) if choice.startswith(DELIMITER) else len(choice)




def _encode(tokenizer, text: str) -> list[int]:
    # lm-eval's HFLM.tok_encode: default special tokens, except no second BOS when the text
    # already starts with the prefix token's string.
    prefix = prefix_token_id(tokenizer)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's HFLM computes them for a causal LM."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def _context_length(model, max_length: int | None) -> int:
    return max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048


def _encode_checked(tokenizer, context: str, continuation: str, i: int, max_length: int):
    ctx, cont = encode_pair(tokenizer, context, continuation)
    if not cont:
        raise DataError(f"continuation {continuation!r} of pair {i} encodes to no tokens")
    if len(cont) > max_length:
        raise DataError(f"continuation of pair {i} has {len(cont)} tokens, more than max_length={max_length}")
    return ctx, cont


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                   max_length: int | None = None, progress: bool = True) -> list[float]:
    """Sum of log-probabilities of each continuation given its context (one forward per pair).

    Inputs longer than max_length (default: the model's context) are cut from the left, as
    lm-eval does.
    """
    check_batch_size(batch_size)
    max_length = _context_length(model, max_length)
    encoded = [_encode_checked(tokenizer, c, x, i, max_length) for i, (c, x) in enumerate(pairs)]
    return _pair_loglikelihoods(model, tokenizer, encoded, batch_size, max_length, progress)


def _pair_batches(encoded, batch_size: int, max_length: int) -> list[list[tuple]]:
    items = []
    for i, (ctx, cont) in enumerate(encoded):
        inp = (ctx + cont)[-(max_length + 1):][:-1]  # the last token is only a target
        items.append((i, inp, cont))
    # Longest first, as lm-eval does: similar lengths share a batch, so little padding.
    items.sort(key=lambda it: -len(it[1]))
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def _pair_loglikelihoods(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                         max_length: int, progress: bool = True, bar=None) -> list[float]:
    out = [0.0] * len(encoded)
    device, pad = model_device(model), pad_id(tokenizer)
    batches = _pair_batches(encoded, batch_size, max_length)
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    own_bar = bar is None
    bar = tqdm(total=len(batches), desc="choices", unit="batch", disable=not progress) if own_bar else bar
    with torch.inference_mode():
        for batch in batches:
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
            bar.update(1)
    if own_bar:
        bar.close()
    return out


@dataclass
class ScoringPlan:
    """Which examples are scored packed (one row each) and which pair by pair."""
    packed: list[int]
    groups: list[tuple[list[int], list[list[int]]]]   # per packed example: (context, continuations)
    pairs: list[tuple[int, int]]                      # (example, choice) scored one forward each
    encoded: list[tuple[list[int], list[int]]]        # their (context, continuation) tokens


def plan_scoring(model, tokenizer, examples: Sequence[Example], max_length: int | None = None,
                 packed: bool | None = None) -> ScoringPlan:
    """Tokenize every (prompt, choice) as lm-eval does and decide how each example is scored.

    packed=None packs whenever the model supports it; False never packs; True requires support.
    """
    max_length = _context_length(model, max_length)
    can_pack = supports_packing(model)
    if packed and not can_pack:
        raise ConfigError(f"{type(model).__name__} cannot score packed choices (it needs a decoder-only "
                          "transformers model with sdpa or eager attention); use packed=None or False")
    use_packing = can_pack if packed is None else bool(packed)
    window = max_row_length(model) if use_packing else None
    plan = ScoringPlan([], [], [], [])
    i = 0
    for k, ex in enumerate(examples):
        enc = []
        for c in ex.choices:
            enc.append(_encode_checked(tokenizer, ex.prompt, c, i, max_length))
            i += 1
        ctx = enc[0][0]
        # Packing needs one shared context and no left truncation (every choice's own sequence
        # fits in max_length), and sliding-window models a row inside the window.
        row = len(ctx) + sum(len(cont) - 1 for _, cont in enc)
        if (use_packing and ctx and all(c == ctx for c, _ in enc)
                and len(ctx) + max(len(cont) for _, cont in enc) - 1 <= max_length
                and (window is None or row <= window)):
            plan.packed.append(k)
            plan.groups.append((ctx, [cont for _, cont in enc]))
        else:
            plan.pairs += [(k, j) for j in range(len(enc))]
            plan.encoded += enc
    return plan


def _score(model, tokenizer, examples, batch_size, max_length, progress, packed) -> list[list[float]]:
    plan = plan_scoring(model, tokenizer, examples, max_length, packed)
    per_example: list[list[float]] = [[0.0] * len(ex.choices) for ex in examples]
    n_batches = -(-len(plan.groups) // batch_size) + -(-len(plan.encoded) // batch_size)
    with tqdm(total=n_batches, desc="choices", unit="batch", disable=not progress) as bar:
        if plan.groups:
            for k, lls in zip(plan.packed, packed_loglikelihoods(model, tokenizer, plan.groups, batch_size, bar=bar)):
                per_example[k] = lls
        if plan.encoded:
            lls = _pair_loglikelihoods(model, tokenizer, plan.encoded, batch_size,
                                       _context_length(model, max_length), bar=bar)
            for (k, j), ll in zip(plan.pairs, lls):
                per_example[k][j] = ll
    return per_example


def multiple_choice(model, tokenizer, examples: Sequence[Example], batch_size: int = 8,
                    progress: bool = True, max_length: int | None = None,
                    packed: bool | None = None) -> dict:
    """acc and acc_norm over examples with prompt, choices and label.

    batch_size counts sequences per forward: packed rows (one per example) or (prompt, choice)
    pairs. packed: None (default) shares the prompt between choices whenever the model allows
    it, False scores one forward per pair (the reference path), True insists on packing.
    """
    check_batch_size(batch_size)
    examples = list(examples)
    if not examples:
        raise DataError("no examples to evaluate")
    for k, ex in enumerate(examples):
        if not ex.choices or ex.label is None or not 0 <= ex.label < len(ex.choices):
            raise DataError(f"example {k} is not a multiple-choice example with a valid label: {ex.prompt[:60]!r}")
        for c in ex.choices:
            if choice_length(c) == 0:
                raise DataError(f"choice {c!r} of example {k} is empty after its delimiter (a leading space); "
                                "acc_norm divides by that length: give the choice some text")
    per_example = _score(model, tokenizer, examples, batch_size, max_length, progress, packed)
    preds, preds_norm = [], []
    for ex, ll in zip(examples, per_example):
        ll = np.array(ll)
        lengths = np.array([float(choice_length(c)) for c in ex.choices])
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
