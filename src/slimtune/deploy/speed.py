"""Measured CPU latency of a model: prefill (one forward over a prompt) and greedy decode (one token at
a time from the prompt's KV cache), batch 1, the median of a few repeats after a warm-up.

  measure_latency(model, prefill_tokens=128, decode_tokens=8, repeats=3, threads=None)

The prompt is seeded random token ids (latency does not depend on the text). Decode is timed alone:
the prompt's cache is built first, then `decode_tokens` greedy steps are timed together. An encoder
(no LM head) gets the prefill only. Timings are measurements of this machine at this moment (other
processes share it): compare models measured in one run, never assert on a number.
"""

from __future__ import annotations

import inspect
import statistics
import time

import torch


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _decode(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds of `steps` greedy steps after the prompt `ids` (the prompt's own forward not timed)."""
    # transformers >= 5.2x names the KV cache `cache` (`past_key_values` is deprecated)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True)
    past, token = out[key], out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, **{key: past})
        past, token = out[key], out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t0


@torch.no_grad()
def measure_latency(model, *, prefill_tokens: int = 128, decode_tokens: int = 8, repeats: int = 3,
                    threads: int | None = None, seed: int = 0) -> dict:
    """{prefill_ms, prefill_tokens_per_s, decode_ms_per_token, decode_tokens_per_s, ...}: medians over
    `repeats` (module docstring). `threads` sets torch's CPU threads for the measurement only."""
    config = model.config
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 1:
        raise ValueError("the model config has no vocab_size to draw prompt tokens from")
    decodes = decode_tokens > 0 and model.get_output_embeddings() is not None
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        ids = torch.randint(0, vocab, (1, prefill_tokens), generator=torch.Generator().manual_seed(seed))
        device = next(model.parameters()).device
        ids = ids.to(device)
        model(input_ids=ids)  # warm-up: caches, allocator, kernel packing
        prefill = [_timed(lambda: model(input_ids=ids, use_cache=False) if decodes else model(input_ids=ids))
                   for _ in range(repeats)]
        decode = [_decode(model, ids, decode_tokens) for _ in range(repeats)] if decodes else []
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    p = statistics.median(prefill)
    out = {"prefill_tokens": prefill_tokens, "repeats": repeats, "threads": used,
           "prefill_ms": round(1000 * p, 3), "prefill_tokens_per_s": round(prefill_tokens / p, 2)}
    if decode:
        d = statistics.median(decode)
        out.update(decode_tokens=decode_tokens, decode_ms_per_token=round(1000 * d / decode_tokens, 3),
                   decode_tokens_per_s=round(decode_tokens / d, 2))
    return out
