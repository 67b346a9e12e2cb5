"""Dense bit packing of b-bit unsigned codes into int32 words (b = 1..8).

Layout (identical to compressed-tensors' `pack-quantized`, so export needs no repacking):
along the last dimension, each run of 32 codes is one little-endian bit stream of 32*b bits;
code e of the run occupies stream bits [e*b, e*b + b), and stream bit t lives in word t // 32
at bit t % 32. Rows are padded with zeros to a multiple of 32 codes and the padding words that
carry no code are dropped, so a row of n codes takes ceil(n * b / 32) words: 4 bits -> 8 codes
per word, 3 bits -> 32 codes in 3 words, 8 bits -> 4 codes per word.
"""

from __future__ import annotations

import math

import torch


def packed_width(n: int, bits: int) -> int:
    return math.ceil(n * bits / 32)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: integer tensor [..., n] with values in [0, 2^bits) -> int32 [..., ceil(n*bits/32)]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if codes.is_floating_point():
        raise TypeError("pack expects integer codes")
    lead, n = codes.shape[:-1], codes.shape[-1]
    c = codes.reshape(-1, n).to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    pad = (-n) % 32
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    rows, runs = c.shape[0], c.shape[1] // 32
    if 32 % bits == 0:
        # Whole codes per word (1, 2, 4, 8 bits): code e sits in word e // k at bit (e % k) * b,
        # the same layout as the bit stream below at a fraction of its cost.
        k = 32 // bits
        words = (c.view(rows, -1, k) << (torch.arange(k, device=c.device) * bits)).sum(-1)
        words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
        return words[:, :packed_width(n, bits)].reshape(*lead, -1)
    shifts = torch.arange(bits, device=c.device)
    stream = (c.view(rows, runs, 32, 1) >> shifts) & 1                 # [rows, runs, 32, bits]
    stream = stream.reshape(rows, runs, bits, 32)                      # bit t -> word t // 32
    words = (stream << torch.arange(32, device=c.device)).sum(-1)      # [rows, runs, bits] in [0, 2^32)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words.reshape(rows, runs * bits)[:, :packed_width(n, bits)].reshape(*lead, -1)


def unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack: int32 [..., ceil(n*bits/32)] -> uint8 codes [..., n]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    lead = words.shape[:-1]
    if words.shape[-1] != packed_width(n, bits):
        raise ValueError(f"{words.shape[-1]} words cannot hold {n} codes of {bits} bits")
    w = words.reshape(-1, words.shape[-1]).to(torch.int64) & 0xFFFFFFFF
    runs = math.ceil(n / 32)
    full = runs * bits
    if w.shape[1] < full:
        w = torch.nn.functional.pad(w, (0, full - w.shape[1]))
    rows = w.shape[0]
    if 32 % bits == 0:
        k = 32 // bits
        codes = (w.view(rows, -1, 1) >> (torch.arange(k, device=w.device) * bits)) & ((1 << bits) - 1)
        return codes.reshape(rows, -1)[:, :n].to(torch.uint8).reshape(*lead, n)
    stream = (w.view(rows, runs, bits, 1) >> torch.arange(32, device=w.device)) & 1   # [rows, runs, bits, 32]
    stream = stream.reshape(rows, runs, 32, bits)
    codes = (stream << torch.arange(bits, device=w.device)).sum(-1)                    # [rows, runs, 32]
    return codes.reshape(rows, runs * 32)[:, :n].to(torch.uint8).reshape(*lead, n)
