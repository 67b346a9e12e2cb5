"""Score all choices of an example in one sequence: the prompt once, then every choice.

A row is  prompt + choice_1[:-1] + choice_2[:-1] + ...  (a choice's last token is only a target).
A 4D attention mask lets each choice see the prompt and its own earlier tokens only, and its
position ids restart at len(prompt), so every choice token gets the hidden state it would get in
its own (prompt + choice) sequence: the same numbers as one forward per pair, up to float
summation order, for 1/k of the prompt work. The prompt's last position predicts the first token
of every choice. Rows (one per example) are sorted by length and right-padded into batches.

Only the positions that predict a choice token go through the LM head: a pre-hook on the output
embedding gathers them before the (vocabulary-wide) matmul.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._common import model_device, model_dtype, pad_id

_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4D mask as given


def supports_packing(model) -> bool:
    """Whether `model` takes a custom 4D attention mask and position ids the way packing needs.

    Decoder-only transformers models (`*ForCausalLM`) whose modeling code builds its masks with
    transformers' masking_utils (which passes a 4D mask through unchanged) under sdpa or eager
    attention. Encoders, encoder-decoders, wrapped models (PeftModel) and remote code that
    builds its own masks fall back to one forward per (prompt, choice) pair.
    """
    config = getattr(model, "config", None)
    if config is None or not type(model).__name__.endswith("ForCausalLM"):
        return False
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return False
    if getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return False
    try:
        params = inspect.signature(model.forward).parameters
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return False
    if "position_ids" not in params or not isinstance(head, torch.nn.Module):
        return False
    module = sys.modules.get(type(model).__module__)
    return module is not None and hasattr(module, "create_causal_mask")


def max_row_length(model) -> int | None:
    """Longest packed row that stays exact: a sliding-window model sees the whole row only
    while the row fits in its window (the custom mask replaces the sliding one)."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return window if isinstance(window, int) and window > 0 else None


@dataclass
class _Row:
    key: int                  # index of the example in the caller's list
    ids: list[int]
    positions: list[int]
    segments: list[int]       # 0: prompt, i + 1: choice i
    sources: list[int]        # per target token: the row position whose logits predict it
    targets: list[int]
    owners: list[int]         # per target token: its choice


def pack_row(key: int, ctx: list[int], conts: list[list[int]]) -> _Row:
    n = len(ctx)
    row = _Row(key, list(ctx), list(range(n)), [0] * n, [], [], [])
    for i, cont in enumerate(conts):
        start = len(row.ids)
        row.sources += [n - 1] + list(range(start, start + len(cont) - 1))
        row.targets += cont
        row.owners += [i] * len(cont)
        row.ids += cont[:-1]
        row.positions += range(n, n + len(cont) - 1)
        row.segments += [i + 1] * (len(cont) - 1)
    return row


def packed_mask(segments: torch.Tensor, dtype: torch.dtype, additive: bool) -> torch.Tensor:
    """[B, 1, T, T] mask from per-token segments (-1 = padding): causal, and a query sees a key
    of its own segment or of the prompt (segment 0). Padding queries see the prompt and earlier
    padding (never an empty row, which would make softmax NaN); real queries never see padding.
    `additive`: 0 / most-negative floats (eager attention) instead of booleans (sdpa)."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((q == k) | (k == 0))
    allowed = allowed[:, None]
    if not additive:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)


def packed_loglikelihoods(model, tokenizer, groups: list[tuple[list[int], list[list[int]]]],
                          batch_size: int = 8, progress: bool = True, bar=None) -> list[list[float]]:
    """Per group (context tokens, [continuation tokens per choice]): the summed log-probability
    of each continuation, computed from packed rows. `bar`: an open tqdm to advance instead."""
    rows = [pack_row(k, ctx, conts) for k, (ctx, conts) in enumerate(groups)]
    rows.sort(key=lambda r: -len(r.ids))  # similar lengths share a batch: little padding
    out = [[0.0] * len(conts) for _, conts in groups]
    device, pad = model_device(model), pad_id(tokenizer)
    additive = model.config._attn_implementation == "eager"
    dtype = model_dtype(model)
    head = model.get_output_embeddings()
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    own_bar = bar is None
    bar = tqdm(total=len(batches), desc="choices", unit="batch", disable=not progress) if own_bar else bar
    with torch.inference_mode():
        for batch in batches:
            width = len(batch[0].ids)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            pos = torch.zeros((len(batch), width), dtype=torch.long)
            seg = torch.full((len(batch), width), -1, dtype=torch.long)
            for b, r in enumerate(batch):
                n = len(r.ids)
                ids[b, :n], pos[b, :n], seg[b, :n] = (torch.tensor(x) for x in (r.ids, r.positions, r.segments))
            flat = torch.tensor([b * width + s for b, r in enumerate(batch) for s in r.sources], device=device)
            logits = _forward_gathered(model, head, ids.to(device), pos.to(device),
                                       packed_mask(seg.to(device), dtype, additive), flat)
            logp = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor([t for r in batch for t in r.targets], device=device)
            token_ll = logp.gather(-1, targets[:, None])[:, 0].double().cpu()
            i = 0
            for r in batch:
                sums = torch.zeros(len(out[r.key]), dtype=torch.float64)
                sums.index_add_(0, torch.tensor(r.owners), token_ll[i:i + len(r.targets)])
                out[r.key] = sums.tolist()
                i += len(r.targets)
            bar.update(1)
    if own_bar:
        bar.close()
    return out


def _forward_gathered(model, head, ids, pos, mask, flat) -> torch.Tensor:
    """[N, V] logits at the flattened (row * width + column) positions `flat`.

    The pre-hook hands the LM head only those hidden states; if a model computes its logits
    without calling its output-embedding module, the hook never fires and the full [B, T, V]
    logits are indexed instead (slower, same numbers)."""
    fired = []

    def gather(_module, args):
        hidden = args[0]
        if fired or tuple(hidden.shape[:2]) != tuple(ids.shape):
            return None
        fired.append(True)
        return (hidden.reshape(-1, hidden.shape[-1])[flat][None],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    finally:
        handle.remove()
    if fired:
        return logits[0]
    if tuple(logits.shape[:2]) != tuple(ids.shape):
        raise RuntimeError(f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for inputs "
                           f"{tuple(ids.shape)}; score it with packed=False")
    return logits.reshape(-1, logits.shape[-1])[flat]
