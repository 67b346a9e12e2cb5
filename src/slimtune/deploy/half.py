"""Token embedding and LM head held in half precision in memory (`load_model(..., embeddings=...)`).

For a small model they dominate an INT4 model's memory (smollm2-135m: 113 MB of fp32 embedding,
tied to the head, beside ~50 MB of INT4 decoder). `half_embeddings` rounds that weight to float16 or
bfloat16 in place on its Parameter, so a tied head keeps sharing it (one half copy, not two), and
keeps the rest of the model's arithmetic in its float dtype:

  embedding  the looked-up rows are cast back to the model's dtype (exact: a lookup does no
             arithmetic, so the result is the half-rounded weight's rows);
  LM head    computed in the model's dtype against the half weight, upcast a block of output
             rows at a time (no full-precision copy is held; the temporary is one block of about
             HEAD_BLOCK_BYTES, small enough to stay in cache, which makes the half head faster than
             a float32 one on a CPU: bench/RESULTS.md, INT4 inference).

So the logits are those of the same model with the embedding / head weights rounded to the half
dtype (float16: relative rounding 2^-11, bfloat16: 2^-8), up to float32 summation order; nothing
else changes. Saving such a model writes the half weights (what an `export --embeddings` artifact
stores anyway).
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
HEAD_BLOCK_BYTES = 4 << 20


def _upcast_output(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output.to(module.slimtune_compute_dtype)


def _head_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
    rows = max(1, HEAD_BLOCK_BYTES // (self.in_features * x.element_size()))
    for start in range(0, self.out_features, rows):
        stop = min(start + rows, self.out_features)
        bias = None if self.bias is None else self.bias[start:stop].to(x.dtype)
        out[..., start:stop] = F.linear(x, self.weight[start:stop].to(x.dtype), bias)
    return out


def half_embeddings(model: nn.Module, dtype: str) -> int:
    """Hold the input embedding and the output head (tied or not) in `dtype` ("float16" or
    "bfloat16"); returns the bytes of memory given back. Idempotent."""
    if dtype not in HALF_DTYPES:
        raise ConfigError(f"embeddings dtype {dtype!r}: choose from {', '.join(HALF_DTYPES)}")
    half = HALF_DTYPES[dtype]
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"half-precision embeddings need an nn.Embedding input embedding, not "
                          f"{type(emb).__name__}")
    if head is not None and not isinstance(head, nn.Linear):
        raise ConfigError(f"half-precision embeddings need an nn.Linear output head, not {type(head).__name__} "
                          "(a quantized head stays as it is)")
    saved, done = 0, set()
    for module in (emb, head):
        if module is None:
            continue
        if not hasattr(module, "slimtune_compute_dtype"):
            module.slimtune_compute_dtype = module.weight.dtype if module.weight.dtype not in HALF_DTYPES.values() \
                else torch.float32
            if module is emb:
                module.register_forward_hook(_upcast_output)
            else:
                module.forward = MethodType(_head_forward, module)
        w = module.weight
        if id(w) not in done and w.dtype != half:
            saved += w.numel() * (w.element_size() - half.itemsize)
            with torch.no_grad():
                w.data = w.data.to(half)  # on the Parameter itself: a tied head still shares it
        done.add(id(w))
    return saved
