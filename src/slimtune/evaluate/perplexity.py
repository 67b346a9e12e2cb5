"""Windowed perplexity of a causal LM on one text.

Windows of `seq_len` text tokens start every `stride` tokens. Each window is fed to the model
after the tokenizer's prefix token (BOS, else EOS: lm-eval's `prefix_token_id`), as one
sequence of seq_len positions: [prefix, t_b, ..., t_{e-2}] predicts t_b ... t_{e-1}, so every
text token is scored, the window's first one conditioned on the prefix alone, as the first
window of lm-eval's rolling log-likelihood is. Models trained with a BOS first (Gemma) are
measured on their input distribution; without it Gemma-3's perplexity reads several times too
high. Each window scores only the tokens that the previous window did not score (the standard
sliding-window definition), so with stride < seq_len each token is scored once with at least
seq_len - stride tokens of text context. stride=None means stride = seq_len (non-overlapping).

prefix=False scores the text alone (no prefix token; the first token of each window has no
context and is not scored): the GPTQ/SparseGPT-paper style number, kept for comparison.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.text import prefix_token_id
from ..errors import ConfigError, DataError, NonFiniteError
from ._common import check_batch_size, model_device, pad_id, right_pad


def windows(n_tokens: int, seq_len: int, stride: int, prefix: bool = False) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) for each window; targets are tokens[first_scored:end].
    Without a prefix token, a window's first token has nothing to condition on."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_len, n_tokens)
        first = max(prev_end, begin + (0 if prefix else 1))
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


def check_perplexity_args(model, seq_len: int, stride: int | None = None, max_windows: int | None = None,
                          batch_size: int = 4) -> int:
    """The cheap checks of a perplexity run (evaluate_model makes them before scoring a task); returns the
    stride."""
    check_batch_size(batch_size)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    stride = seq_len if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= seq_len:
        raise ConfigError(f"stride must be an integer in 1..seq_len ({seq_len}), got {stride!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ConfigError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and seq_len > limit:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's context ({limit} positions); use seq_len <= {limit}")
    return stride


def perplexity(model, tokenizer, text: str, seq_len: int = 512, stride: int | None = None,
               max_windows: int | None = None, batch_size: int = 4, progress: bool = True,
               prefix: bool = True) -> dict:
    """Perplexity = exp(mean negative log-likelihood per scored token), in fp32.

    The text is tokenized without special tokens; each window gets the prefix token itself
    (prefix=True; see the module docstring), so a tokenizer that adds a BOS on its own does not
    get two. max_windows keeps only the first windows (a quick estimate).
    """
    stride = check_perplexity_args(model, seq_len, stride, max_windows, batch_size)
    tokens = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(tokens) < seq_len:
        raise DataError(f"the text has {len(tokens)} tokens, fewer than one window of seq_len={seq_len}; "
                        "give a longer text or a smaller seq_len")
    first_token = prefix_token_id(tokenizer) if prefix else None
    lead = [] if first_token is None else [first_token]
    spans = windows(len(tokens), seq_len, stride, prefix=bool(lead))
    if max_windows is not None:
        spans = spans[:max_windows]

    device, pad = model_device(model), pad_id(tokenizer)
    nll_sum, n_scored = 0.0, 0
    batches = [spans[i:i + batch_size] for i in range(0, len(spans), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
            ids, mask = right_pad([lead + tokens[b:e - len(lead)] for b, e, _ in batch], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, (b, e, first) in enumerate(batch):
                # input position j predicts text token b + j + 1 - len(lead)
                shift = 1 - len(lead)
                pred = logits[row, first - b - shift: e - b - shift].float()
                target = torch.tensor(tokens[first:e], device=pred.device)
                nll_sum += F.cross_entropy(pred, target, reduction="sum").item()
                n_scored += e - first
    nll = nll_sum / n_scored
    if not math.isfinite(nll):
        raise NonFiniteError(f"the model's log-likelihoods of the text are not finite (mean NLL {nll}): its weights "
                             "or an adapter hold nan or inf values, so there is no perplexity to report")
    return {"perplexity": math.exp(nll), "nll": nll, "tokens_scored": n_scored,
            "windows": len(spans), "seq_len": seq_len, "stride": stride, "prefix_token": first_token}
