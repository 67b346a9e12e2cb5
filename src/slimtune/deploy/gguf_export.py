"""Write a (packed INT4, merged, or float) causal LM as a GGUF file that llama.cpp loads.

Architectures: llama-type models (model_type "llama": SmolLM2, Llama 2/3 with plain RoPE). Others
(gemma3, phi3, ...) are refused: their GGUF layouts need per-architecture tensor transforms and
keys that are not written or tested here.

Quantized linears carry their INT4 grid over where the formats coincide (no re-quantization):
  4-bit symmetric (z = 8), groups a multiple of 32   -> Q4_0: x = d * (q - 8)
  4-bit asymmetric,        groups a multiple of 32   -> Q4_1: x = d * q + m, m = -d * z
  8-bit symmetric (z = 128), groups a multiple of 32 -> Q8_0: x = d * (q - 128)
(a group of 64, 128, 192 or a whole row is 2, 4, 6, ... blocks of 32 sharing one scale, so it maps
exactly). The codes are copied bit for bit; the float32 scale becomes an fp16 d. For Q4_1 the
offset m must be an fp16 number too, and m = -d * z exactly keeps every zero weight (q = z) exactly
0, so d is s rounded to fp16 with as few significand bits dropped (0..4) as that needs; a
block where no such d exists (fp16 subnormal scales) gets the nearest d and m, and is counted in
the report as "inexact_zero_blocks". Other grids (2/3 bits, 8-bit asymmetric, groups of 16 or not
a multiple of 32) are refused unless `requantize` names a GGUF type ("q4_0", "q4_1", "q8_0") to
re-quantize their dequantized weights with gguf's own quantizer.

Float tensors: linear weights in `float_type` ("f16" default, "bf16", "q8_0", "f32"), the token
embedding (and an untied output head) in `embed_type` ("q8_0" default, i.e. int8 per block of 32
with an fp16 scale, as llama.cpp's own Q4 files store it; "f16", "bf16", "f32"); norms and biases
in F32. A tied head is not written: llama.cpp uses token_embd for the output when output.weight is
absent. Q and K rows are permuted to llama.cpp's rotary layout (whole rows move, so blocks stay intact).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..quant.linear import QuantLinear
from .gguf_vocab import add_vocab

Q = gguf.GGMLQuantizationType
FLOAT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
REQUANTIZE = {"q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1}
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA}


def _choice(value: str | None, options: dict, what: str):
    if value not in options:
        raise ConfigError(f"{what}={value!r} is not supported; choose from {', '.join(options)}")
    return options[value]


# ---- blocks -------------------------------------------------------------------------------
def _nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [N, B, 32] -> ggml's qs [N, B, 16]: byte j holds element j (low) and j + 16 (high)."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)[..., None]).view(np.uint8)


def _zero_exact_scale(s: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(d, m) fp16 with m = -d * z exactly where possible (see the module docstring); inexact count."""
    s, z = s.astype(np.float64), z.astype(np.float64)
    d = s.astype(np.float16).astype(np.float64)
    exact = (-d * z).astype(np.float16).astype(np.float64) == -d * z
    mant, exp = np.frexp(s)
    for dropped in range(1, 5):
        bits = 11 - dropped
        cand = np.ldexp(np.round(mant * 2.0 ** bits), exp - bits)
        ok = (cand.astype(np.float16).astype(np.float64) == cand) & \
             ((-cand * z).astype(np.float16).astype(np.float64) == -cand * z)
        take = ~exact & ok
        d = np.where(take, cand, d)
        exact |= take
    return d, -d * z, int((~exact).sum())


def grid_blocks(m: QuantLinear) -> tuple[np.ndarray, gguf.GGMLQuantizationType, int] | str:
    """(bytes [out, row bytes], GGUF type, inexact-zero blocks) carrying m's grid, or why it cannot."""
    k = m.in_features
    span = k if m.group_size == -1 else m.group_size
    if m.g_idx is not None and not torch.equal(m.g_idx.long(), torch.arange(k, device=m.g_idx.device) // span):
        return "permuted groups (g_idx)"
    if span % 32 or k % 32:
        return f"group size {m.group_size} over {k} inputs is not a whole number of GGUF's 32-weight blocks"
    zeros = m.zeros.cpu().numpy().astype(np.int64)
    if m.bits == 4 and m.symmetric and (zeros == 8).all():
        qtype = Q.Q4_0
    elif m.bits == 4:
        qtype = Q.Q4_1
    elif m.bits == 8 and (zeros == 128).all():
        qtype = Q.Q8_0
    else:
        return f"{m.bits}-bit {'symmetric' if m.symmetric else 'asymmetric'} codes (GGUF carries 4-bit and " \
               "8-bit symmetric grids)"
    rep = span // 32
    codes = m.codes().cpu().numpy().reshape(m.out_features, k // 32, 32)
    s = np.repeat(m.scales.cpu().numpy(), rep, axis=1)
    z = np.repeat(zeros, rep, axis=1)
    inexact = 0
    if qtype == Q.Q4_0:
        parts = [_f16_bytes(s), _nibbles(codes)]
    elif qtype == Q.Q4_1:
        d, mins, inexact = _zero_exact_scale(s, z)
        parts = [_f16_bytes(d), _f16_bytes(mins), _nibbles(codes)]
    else:
        parts = [_f16_bytes(s), (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    return np.concatenate(parts, axis=-1).reshape(m.out_features, -1), qtype, inexact


def _float_tensor(w: torch.Tensor, qtype) -> np.ndarray:
    a = w.detach().cpu().to(torch.float32).numpy()
    if qtype == Q.F32:
        return a
    if qtype == Q.F16:
        return a.astype(np.float16)
    return gguf.quants.quantize(a, qtype)


# ---- layout -------------------------------------------------------------------------------
def _rope_permute(a: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary half-split rows -> llama.cpp's interleaved pairs (per head); rows move whole."""
    return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _check_config(config) -> None:
    mt = getattr(config, "model_type", None)
    if mt not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports model types {', '.join(ARCHITECTURES)} (llama architecture); "
                          f"this model is {mt!r}: export it as compressed-tensors (format 'compressed-tensors')")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"GGUF export writes plain RoPE only; this model uses rope_type {rope.get('rope_type')!r}")


def _add_metadata(w: gguf.GGUFWriter, config, name: str) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(config.vocab_size)


def _tensors(model: nn.Module, float_qtype, embed_qtype, requantize) -> list[tuple[str, np.ndarray, object, str]]:
    """(HF name, array, GGUF type or None for plain float arrays, how) for every tensor to write."""
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    out, refused = [], []
    for name, m in quant.items():
        got = grid_blocks(m)
        if isinstance(got, str):
            if requantize is None:
                refused.append(f"{name}: {got}")
                continue
            out.append((f"{name}.weight", _float_tensor(m.dequantized_weight(), requantize), requantize,
                        "requantized"))
        else:
            out.append((f"{name}.weight", got[0], got[1], f"grid:{got[2]}"))
        if m.bias is not None:
            out.append((f"{name}.bias", m.bias.detach().float().numpy(), Q.F32, "float"))
    if refused:
        raise ConfigError(f"{len(refused)} quantized layers have no GGUF type carrying their grid, e.g. {refused[0]}; "
                          f"quantize with 4 bits (symmetric -> Q4_0, asymmetric -> Q4_1) or 8 bits symmetric "
                          f"(Q8_0) and a group size that is a multiple of 32 (32, 64, 128, ... or -1), or re-quantize "
                          f"explicitly with requantize={'|'.join(REQUANTIZE)}")
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in quant:
            continue
        if head is not None and t.data_ptr() == embed.data_ptr() and key.startswith(_name_of(model, head)):
            continue  # tied head: llama.cpp reads token_embd for the output
        if t.data_ptr() == embed.data_ptr() or (head is not None and key == _name_of(model, head) + ".weight"):
            out.append((key, _float_tensor(t, embed_qtype), embed_qtype, "embedding"))
        elif t.dim() == 2:
            out.append((key, _float_tensor(t, float_qtype), float_qtype, "float"))
        else:
            out.append((key, t.detach().float().numpy(), Q.F32, "float"))
    return out


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def export_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, *, float_type: str = "f16",
                embed_type: str = "q8_0", requantize: str | None = None, tokenizer_pre: str | None = None,
                name: str | None = None) -> dict:
    """Write `model` (QuantLinear and/or float linears) and its tokenizer as one GGUF file at `path`.

    Returns a report: tensors per GGUF type, file bytes, tokenizer keys, inexact-zero Q4_1 blocks."""
    config = model.config
    _check_config(config)
    float_qtype = _choice(float_type, FLOAT_TYPES, "float_type")
    embed_qtype = _choice(embed_type, FLOAT_TYPES, "embed_type")
    req_qtype = None if requantize is None else _choice(requantize, REQUANTIZE, "requantize")
    tensors = _tensors(model, float_qtype, embed_qtype, req_qtype)
    names = gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), config.model_type)
    _add_metadata(writer, config, name or getattr(config, "_name_or_path", "") or path.stem)
    vocab = add_vocab(writer, tokenizer, config.vocab_size, tokenizer_pre)
    counts: dict[str, int] = {}
    inexact = 0
    for key, array, qtype, how in tensors:
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"no GGUF name for tensor {key} of a {config.model_type} model")
        if key.endswith("q_proj.weight"):
            array = _rope_permute(array, n_head)
        elif key.endswith("k_proj.weight"):
            array = _rope_permute(array, n_kv)
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(target, np.ascontiguousarray(array))
        else:
            writer.add_tensor(target, np.ascontiguousarray(array), raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        if how.startswith("grid:"):
            inexact += int(how[5:])
    linear = Counter(t for key, _, t, how in tensors if how != "embedding" and t != Q.F32 and key.endswith(".weight"))
    main = linear.most_common(1)[0][0] if linear else float_qtype
    writer.add_file_type(FILE_TYPES[main])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": str(path), "bytes": path.stat().st_size, "tensors": counts, "file_type": main.name,
            "embed_type": embed_type, "float_type": float_type, "requantize": requantize,
            "inexact_zero_blocks": inexact, "tokenizer": vocab}
