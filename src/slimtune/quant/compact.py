"""slimtune's compact model directory: the smallest lossless form of a packed model, for deployment.

A compressed-tensors directory (formats.py) stores every INT4 code, the pruned ones included, and the
embedding in a float type. A 50%-sparse INT4 decoder spends half of its code bytes on zeros, and a small
model's embedding outweighs its decoder (smollm2-135m: 28 M tied embedding entries beside 106 M decoder
weights). No format that transformers or vLLM loads stores pruned INT4 codes sparsely (compressed-tensors'
bitmask compressor works on unpacked dense tensors, llama.cpp's types are dense), so this one is slimtune's.

Per packed linear `name` (the grid's leaves as in formats.py: float32 scales and integer zero points, so
the loaded QuantParams are byte-identical and QA-SparsePEFT's exact merge still holds):
  name.weight_mask    int32 [out, ceil(in/32)]      bit set where the code is not its group's zero point
                                                     (a pruned weight is exactly its zero point)
  name.weight_values  int32 [1, ceil(nnz*bits/32)]  those codes, row-major
  (packing.pack layouts). A layer the mask would not make smaller (sparsity under 1/bits) keeps
  formats.py's dense `weight_packed`.
The token embedding and the LM head (one tensor when tied), by `embeddings`:
  float16 / bfloat16  cast;
  int8 / int4         round-to-nearest on a per-row symmetric min-max grid (int8) or asymmetric groups
                      of 32 with the mse observer (int4): leaves `.codes`, `.scales`, `.zeros`. The scales
                      are rounded up to float16 before the codes are chosen, so storing them as float16
                      loses nothing: the loaded float32 weight is exactly scales * (codes - zeros). This one is lossy against the source
                      model (a quantized embedding and head): measure it (bench/RESULTS.md).
Files: config.json without a quantization_config, COMPACT_META (format, version, the packed layers'
compressed-tensors config, per layer its storage, the embedding grids), COMPACT_FILE, the tokenizer.
transformers cannot read it (it finds no model.safetensors and says so); `models.load_model` can.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError
from .formats import (EMBEDDING_DTYPES, _params_from_tensors, _state_dict, _weight_args, build_quantized,
                      embedding_keys, grid_from_tensors, quantization_config, read_tokenizer)
from .linear import quant_linears
from .packing import pack, packed_width, unpack
from .params import QuantParams, _group_index, compute_params

COMPACT_FILE = "model.compact.safetensors"
COMPACT_META = "slimtune_compact.json"
FORMAT, VERSION = "slimtune-compact", 1
# embeddings -> (bits, group size, symmetric, observer) of the quantized forms. INT4's min-max grid costs
# perplexity that the mse observer (each group's range shrunk to its least squared error) wins back in part
# (bench/RESULTS.md, the compact format); INT8's is already close to the float embedding.
EMBEDDING_GRIDS = {"int8": (8, -1, True, "minmax"), "int4": (4, 32, False, "mse")}
EMBEDDINGS = (*EMBEDDING_DTYPES, *EMBEDDING_GRIDS)


def is_compact(source: str | os.PathLike) -> bool:
    return (Path(source) / COMPACT_META).is_file()


def _zero_codes(params: QuantParams, in_features: int) -> torch.Tensor:
    """int32 [out, in]: the code each weight has when it is exactly zero (its group's zero point)."""
    idx = _group_index(in_features, params.group_size, params.g_idx, params.zeros.device)
    return params.zeros.index_select(1, idx)


def _sparse_codes(codes: torch.Tensor, params: QuantParams) -> dict[str, torch.Tensor] | None:
    """{"weight_mask", "weight_values"} of one layer, or None when they are not smaller than dense codes."""
    out, cols = codes.shape
    mask = codes.to(torch.int32) != _zero_codes(params, cols)
    nnz = int(mask.sum())
    if out * packed_width(cols, 1) + packed_width(nnz, params.bits) >= out * packed_width(cols, params.bits):
        return None
    return {"weight_mask": pack(mask.to(torch.uint8), 1).contiguous(),
            "weight_values": pack(codes[mask][None], params.bits).contiguous()}


def _dense_codes(tensors: dict, params: QuantParams, name: str, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 codes [out, in] of a layer stored with a mask: the zero points, the values where the mask is set."""
    out, cols = shape
    mask = unpack(tensors[f"{name}.weight_mask"], 1, cols).bool()
    nnz = int(mask.sum())
    values = tensors[f"{name}.weight_values"]
    if values.shape != (1, packed_width(nnz, params.bits)):
        raise ArtifactError(f"{name}: {tuple(values.shape)} value words do not hold the mask's {nnz} codes")
    codes = _zero_codes(params, cols).to(torch.uint8)
    codes[mask] = unpack(values, params.bits, nnz)[0]
    return codes


def embedding_grid(weight: torch.Tensor, kind: str) -> tuple[QuantParams, torch.Tensor]:
    """(grid, uint8 codes) of an embedding quantized as `kind` ("int8" / "int4"): the grid's scales rounded up
    to float16 (so that they are stored exactly and still span what they spanned), its zero points kept."""
    bits, group_size, symmetric, observer = EMBEDDING_GRIDS[kind]
    w = weight.detach().float()
    params = compute_params(w, bits, group_size, symmetric, observer)
    up = params.scales * (1 + 2.0 ** -10)  # float16 spacing is at most 2^-10 relative: nearest >= the scale
    half = up.to(torch.float16).clamp(min=torch.finfo(torch.float16).tiny)
    params = QuantParams(bits, group_size, symmetric, half.float(), params.zeros)
    return params, params.quantize(w)


def _quantized_embedding(weight: torch.Tensor, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The leaves and grid record of an embedding stored as `kind` (embedding_grid)."""
    params, codes = embedding_grid(weight, kind)
    leaves = {"codes": pack(codes, params.bits).contiguous(), "scales": params.scales.to(torch.float16).contiguous()}
    if not params.symmetric:
        leaves["zeros"] = pack(params.zeros.to(torch.uint8), params.bits).contiguous()
    return leaves, {"bits": params.bits, "group_size": params.group_size, "symmetric": params.symmetric,
                    "observer": EMBEDDING_GRIDS[kind][3], "shape": list(weight.shape)}


def _stored_embedding(tensors: dict, key: str, grid: dict) -> tuple[QuantParams, torch.Tensor]:
    """(grid, uint8 codes) of a stored quantized embedding; its leaves are taken out of `tensors`."""
    rows, cols = grid["shape"]
    bits, group_size = grid["bits"], grid["group_size"]
    scales = tensors.pop(f"{key}.scales").float()
    zeros = unpack(tensors.pop(f"{key}.zeros"), bits, scales.shape[1]).to(torch.int32) if not grid["symmetric"] \
        else torch.full(scales.shape, 1 << (bits - 1), dtype=torch.int32)
    params = QuantParams(bits, group_size, grid["symmetric"], scales, zeros)
    return params, unpack(tensors.pop(f"{key}.codes"), bits, cols)


def _embedding_weight(tensors: dict, key: str, grid: dict) -> torch.Tensor:
    params, codes = _stored_embedding(tensors, key, grid)
    return params.dequantize(codes)


def write_compact(model: nn.Module, directory: str | os.PathLike, tokenizer=None, embeddings: str = "int4") -> dict:
    """Write a packed model (QuantLinear modules) as a compact directory into `directory`; returns the bytes
    of its parts: {"layers", "embeddings", "other", "sparse_layers", "dense_layers"}."""
    from safetensors.torch import save_file

    if embeddings not in EMBEDDINGS:
        raise ConfigError(f"embeddings={embeddings!r}: choose from {', '.join(EMBEDDINGS)}")
    qcfg = quantization_config(model)  # refuses a model without packed layers, or with a permuted g_idx
    tensors = _state_dict(model)
    storage = {}
    for name, m in quant_linears(model).items():
        sparse = _sparse_codes(m.codes(), m.params)
        storage[name] = "dense" if sparse is None else "bitmask"
        if sparse is not None:
            del tensors[f"{name}.weight_packed"]
            tensors.update({f"{name}.{leaf}": t for leaf, t in sparse.items()})
    grids, embedded = {}, embedding_keys(model)
    for key in embedded:
        weight = tensors.pop(key)
        if embeddings in EMBEDDING_DTYPES:
            tensors[key] = weight.to(EMBEDDING_DTYPES[embeddings])
        else:
            leaves, grids[key] = _quantized_embedding(weight, embeddings)
            tensors.update({f"{key}.{leaf}": t for leaf, t in leaves.items()})
    directory = Path(directory)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    (directory / COMPACT_META).write_text(json.dumps(
        {"format": FORMAT, "version": VERSION, "quantization_config": qcfg, "layers": storage,
         "embeddings": embeddings, "embedding_grids": grids}, indent=1))
    save_file(tensors, str(directory / COMPACT_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    sizes = {"layers": 0, "embeddings": 0, "other": 0}
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        part = "layers" if owner in storage and leaf.startswith("weight_") else \
            "embeddings" if key in embedded or owner in embedded else "other"
        sizes[part] += t.numel() * t.element_size()
    return {**sizes, "sparse_layers": sum(s == "bitmask" for s in storage.values()),
            "dense_layers": sum(s == "dense" for s in storage.values())}


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / COMPACT_META).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path / COMPACT_META} is unreadable: {e}") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ArtifactError(f"{path} is a {meta.get('format')} v{meta.get('version')} directory; this slimtune reads "
                            f"{FORMAT} v{VERSION}")
    return meta


def _layers(meta: dict, tensors: dict) -> dict[str, tuple[QuantParams, torch.Tensor]]:
    """name -> (grid, uint8 codes) of every packed layer, whichever way it is stored."""
    qcfg, layers = meta["quantization_config"], {}
    for name, storage in meta["layers"].items():
        args = _weight_args(qcfg, name)
        if storage == "dense":
            layers[name] = _params_from_tensors(args, tensors, name)
            continue
        params = grid_from_tensors(args, tensors, name)
        shape = tuple(int(v) for v in tensors[f"{name}.weight_shape"].tolist())
        layers[name] = params, _dense_codes(tensors, params, name, shape)
    return layers


def read_compact_layers(model_dir: str | os.PathLike):
    """Yield (name, QuantParams, uint8 codes) per packed layer of a compact directory (for `slimtune inspect`)."""
    from safetensors.torch import load_file

    path = Path(model_dir)
    for name, (params, codes) in _layers(read_meta(path), load_file(str(path / COMPACT_FILE))).items():
        yield name, params, codes


def read_compact_embeddings(model_dir: str | os.PathLike):
    """Yield (key, grid record, QuantParams, uint8 codes) per quantized embedding of a compact directory."""
    from safetensors import safe_open

    path = Path(model_dir)
    with safe_open(str(path / COMPACT_FILE), "pt") as st:
        for key, grid in read_meta(path)["embedding_grids"].items():
            leaves = {f"{key}.{leaf}": st.get_tensor(f"{key}.{leaf}") for leaf in ("codes", "scales", "zeros")
                      if f"{key}.{leaf}" in st.keys()}
            yield key, grid, *_stored_embedding(leaves, key, grid)


def load_compact(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None): QuantLinear modules with the stored codes and grids, quantized embeddings
    dequantized into float32 (exactly scales * (codes - zeros)), float16 / bfloat16 ones upcast on loading."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(model_dir)
    meta = read_meta(path)
    if not (path / COMPACT_FILE).is_file():
        raise ArtifactError(f"{path} has {COMPACT_META} but no {COMPACT_FILE}")
    tensors = load_file(str(path / COMPACT_FILE))
    try:
        layers = _layers(meta, tensors)
        for key, grid in meta["embedding_grids"].items():
            tensors[key] = _embedding_weight(tensors, key, grid)
    except KeyError as e:
        raise ArtifactError(f"{path / COMPACT_FILE} lacks tensor {e} that {COMPACT_META} describes") from e
    config = AutoConfig.from_pretrained(path)
    return build_quantized(path, config, layers, tensors, dtype), read_tokenizer(path)
