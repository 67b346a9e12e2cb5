"""Calibration batches: random windows of a text, each after the tokenizer's prefix token.

Shared by every calibrated method (Wanda, SparseGPT, GPTQ); validated before any work.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .text import TEXT_SOURCES, load_text, prefix_token_id


def _calibration_text(source: str) -> tuple[str, str]:
    """(text, how it was read). A string that is neither a known source nor a file is raw text."""
    key = str(source)
    try:
        is_file = Path(key).expanduser().is_file()
    except (OSError, ValueError):  # e.g. "File name too long": it is text, not a path
        is_file = False
    if key in TEXT_SOURCES or is_file:
        return load_text(key), f"source {key!r}"
    if re.search(r"\s", key):
        return key, "the raw text passed as source (it is neither a known source nor an existing file)"
    return load_text(key), f"source {key!r}"  # raises DataError naming the known sources


def _check_counts(n_samples, seq_len, seed) -> None:
    for name, value, low in (("n_samples", n_samples, 1), ("seq_len", seq_len, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"calibration {name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"calibration seed must be an integer, got {seed!r}")


def check_calibration(model, tokenizer, method: str, calibration: dict | None,
                      defaults: dict) -> tuple[dict, torch.Tensor]:
    """Validate a calibration dict against its defaults' keys and the model; return the completed
    dict (a long raw-text source shortened for manifests) and the token ids [n_samples, seq_len].
    Tokenizing is the check for "text too short" (DataError), so it happens here, before work."""
    if calibration is not None and not isinstance(calibration, dict):
        raise ConfigError(f"calibration must be a dict with keys {', '.join(defaults)}, got {calibration!r}")
    unknown = sorted(set(calibration or {}) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown calibration key(s) {', '.join(unknown)}; accepted: {', '.join(defaults)}")
    cal = {**defaults, **(calibration or {})}
    _check_counts(cal["n_samples"], cal["seq_len"], cal["seed"])
    if isinstance(cal["batch_size"], bool) or not isinstance(cal["batch_size"], int) or cal["batch_size"] < 1:
        raise ConfigError(f"calibration batch_size must be a positive integer, got {cal['batch_size']!r}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and cal["seq_len"] > limit:
        raise ConfigError(f"calibration seq_len {cal['seq_len']} exceeds the model's context of {limit} positions")
    if tokenizer is None:
        raise ConfigError(f"method {method!r} needs calibration data, so a tokenizer is required")
    input_ids = calibration_batches(tokenizer, cal["source"], cal["n_samples"], cal["seq_len"], cal["seed"])
    cal["source"] = str(cal["source"]) if len(str(cal["source"])) <= 200 else "<text>"
    return cal, input_ids


def calibration_tokens(tokenizer, source: str = "news", n_samples: int = 16, seq_len: int = 512,
                       after_prefix: bool = False) -> list[int]:
    """The source's token ids, after checking there are enough for n_samples windows of seq_len
    text tokens (each window follows a prefix token when after_prefix)."""
    text, how = _calibration_text(source)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    need = n_samples * seq_len
    if len(ids) < need:
        raise DataError(
            f"calibration text is too short: {how} has {len(ids)} tokens, but {n_samples} samples x "
            f"{seq_len} text tokens{' (after the prefix token)' if after_prefix else ''} need {need}; use a longer text, fewer samples or a shorter seq_len")
    return ids


def calibration_batches(tokenizer, source: str = "news", n_samples: int = 16, seq_len: int = 512,
                        seed: int = 0) -> torch.Tensor:
    """LongTensor [n_samples, seq_len]: random windows of the tokenized text, deterministic per seed,
    each after the tokenizer's prefix token (BOS, else EOS; see data.text.prefix_token_id), so
    the statistics come from the input distribution the model was trained on (and perplexity
    is measured on), not from a BOS-less one.

    source: a named text source ("news", "wiki"), a UTF-8 file path, or the text itself.
    The text must hold at least n_samples * seq_len tokens (windows may overlap, but the
    calibration set never has fewer distinct tokens than it claims).
    """
    _check_counts(n_samples, seq_len, seed)
    lead = prefix_token_id(tokenizer)
    span = seq_len - (lead is not None)
    ids = torch.tensor(calibration_tokens(tokenizer, source, n_samples, span, lead is not None), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - span + 1, (n_samples,), generator=gen)
    rows = torch.stack([ids[s:s + span] for s in starts.tolist()])
    return rows if lead is None else torch.cat([torch.full((n_samples, 1), lead, dtype=torch.long), rows], 1)
