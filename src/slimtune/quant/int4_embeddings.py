"""Token embedding and LM head held as INT4 codes in memory (`load_model(..., embeddings="int4")`).

In the int4 kernel runtime of a small model the LM head is the largest weight a decode step reads
(smollm2-135m: 28 M of its 135 M weights); in float16 it is read at 2 bytes per weight beside a decoder
read at half a byte. Here both ends use the compact format's INT4 embedding grid (asymmetric groups of
32, mse observer, float16 scales; quant/compact.py):
  a compact directory whose embedding was exported as INT4 gives its stored codes and grid, so the
  model in memory is exactly the exported one; any other model's float embedding is quantized on
  loading with the same recipe (a lossy step, like `export --embeddings int4`: measure it).
  embedding  Int4Embedding: the codes two per byte and the grid; a lookup dequantizes only the rows it
             reads, exactly scales * (codes - zeros) (the values dequantize() gives), in the model's dtype
  LM head    a QuantLinear of the same codes and grid on the model's int4 path: with int4="kernel" the
             int4 kernel (its own packed copy, within the kernel's bfloat16 tolerance: deploy/int4.py);
             a tied pair shares one grid (scales and zero points held once)
It is an inference form: to save or fine-tune, load the model without it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .compact import EMBEDDING_GRIDS, embedding_grid, is_compact, read_compact_embeddings
from .linear import QuantLinear, set_inference
from .packing import pack, unpack
from .params import QuantParams

KIND = "int4"


class Int4Embedding(nn.Module):
    """nn.Embedding's lookup over INT4 codes [num_embeddings, dim] (module docstring)."""

    def __init__(self, params: QuantParams, codes: torch.Tensor, dtype: torch.dtype, padding_idx=None,
                 embed_scale: torch.Tensor | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.group_size, self.dtype, self.padding_idx = params.group_size, dtype, padding_idx
        self.register_buffer("codes", pack(codes, params.bits))
        self.register_buffer("scales", params.scales)
        self.register_buffer("zeros", params.zeros.to(torch.uint8))
        self.embed_scale = embed_scale  # Gemma scales its embedding by sqrt(hidden) inside the module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        n, groups = flat.numel(), self.scales.shape[1]
        q = unpack(self.codes[flat], 4, self.embedding_dim).to(torch.float32).view(n, groups, -1)
        w = (q - self.zeros[flat].to(torch.float32)[..., None]) * self.scales[flat][..., None]
        out = w.view(*ids.shape, self.embedding_dim).to(self.dtype)
        return out if self.embed_scale is None else out * self.embed_scale.to(out.dtype)


def _stored_grids(model: nn.Module) -> dict[str, tuple[QuantParams, torch.Tensor]]:
    """{state-dict key: (grid, codes)} of the INT4 embeddings a compact source directory stored."""
    source = getattr(model, "slimtune_source", None)
    if source is None or not is_compact(source):
        return {}
    bits, group_size, symmetric, _ = EMBEDDING_GRIDS[KIND]
    return {key: (params, codes) for key, grid, params, codes in read_compact_embeddings(source)
            if (grid["bits"], grid["group_size"], grid["symmetric"]) == (bits, group_size, symmetric)}


def int4_embeddings(model: nn.Module, inference: str = "dequantize") -> None:
    """Replace the input embedding and the LM head (tied or not) by their INT4 forms; `inference` is the
    head's QuantLinear path ("kernel" or "dequantize")."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"INT4 embeddings need an nn.Embedding input embedding, not {type(emb).__name__}")
    if head is not None and not isinstance(head, nn.Linear):
        raise ConfigError(f"INT4 embeddings need an nn.Linear output head, not {type(head).__name__}")
    group = EMBEDDING_GRIDS[KIND][1]
    if emb.embedding_dim % group:
        raise ConfigError(f"INT4 embeddings use groups of {group}: the embedding width {emb.embedding_dim} is not a "
                          f"multiple of it (use embeddings='float16' or 'bfloat16')")
    if head is not None and head.bias is not None:
        raise ConfigError("INT4 embeddings: the LM head has a bias; use embeddings='float16' or 'bfloat16'")
    stored = _stored_grids(model)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    grids: dict[int, tuple[QuantParams, torch.Tensor]] = {}
    for module in (emb, head):
        if module is None or id(module.weight) in grids:
            continue
        w = module.weight
        found = [stored[n] for n in names.get(id(w), []) if n in stored]
        grids[id(w)] = found[0] if found else embedding_grid(w, KIND)
    params, codes = grids[id(emb.weight)]
    dtype = emb.weight.dtype if emb.weight.dtype.is_floating_point else torch.float32
    model.set_input_embeddings(Int4Embedding(params, codes, dtype, emb.padding_idx, getattr(emb, "embed_scale", None)))
    if head is not None:
        params, codes = grids[id(head.weight)]
        q = QuantLinear.from_codes(params, codes)
        if head.weight is emb.weight:  # one grid for the tied pair
            new_emb = model.get_input_embeddings()
            q.scales, q.zeros = new_emb.scales, new_emb.zeros
        model.set_output_embeddings(q)
        set_inference(q, inference)
