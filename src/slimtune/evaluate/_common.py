"""Small helpers shared by the evaluators."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a model without parameters: nothing to place
        return torch.device("cpu")


def model_dtype(model) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter's)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def pad_id(tokenizer) -> int:
    # Padded positions are masked out or sliced away, so any valid id works; prefer the real pad.
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return tid
    return 0


def right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (input_ids, attention_mask); with a causal model the
    padding comes after every real token, so it cannot change their logits."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
