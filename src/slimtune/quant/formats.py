"""Save quantized models as compressed-tensors `pack-quantized` HF directories, and load them back.

One on-disk format serves both readers:
- plain `transformers.AutoModelForCausalLM.from_pretrained(dir)` (with compressed-tensors
  installed) loads it and reproduces slimtune's forward exactly;
- `load_quantized(dir)` rebuilds slimtune's QuantLinear modules with byte-identical
  QuantParams (needed by QA-SparsePEFT's merge), without compressed-tensors.

Layout per quantized linear `name` (the codes are packed exactly as compressed-tensors packs them):
  name.weight_packed      int32 [out, ceil(in*bits/32)]
  name.weight_scale       float32 [out, n_groups]
  name.weight_shape       int64 [2]
  name.weight_zero_point  int8 [out, n_groups] = z - 2^(bits-1)   (asymmetric only)
compressed-tensors stores signed codes q - 2^(bits-1) and packs them with that offset added
back, so its packed words are our unsigned codes bit for bit.

Symmetric grids use strategy "group" (or "channel" for group_size -1): the standard W4A16
layout. Asymmetric grids use strategy "block" with block_structure [1, group_size]: the same
contiguous groups, but compressed-tensors 0.20 keeps block zero points unpacked (int8), while
for "group"/"channel" it packs them along the output dimension and transformers 5.23 then fails
to load the checkpoint (weight_zero_point shape mismatch: the module is initialised with
unpacked [out, n_groups] zero points). Checked: block-strategy asymmetric checkpoints with 2, 3,
4 and 8 bits load with plain from_pretrained on CPU and reproduce the logits exactly.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..architectures import is_causal_config
from ..artifacts import atomic_dir
from ..errors import ArtifactError, ConfigError
from .linear import QuantLinear, _set_module, quant_linears
from .packing import unpack
from .params import QuantParams

WEIGHTS_FILE = "model.safetensors"
CT_FORMAT = "pack-quantized"
_LEAVES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")
_COMPACT_LEAVES = ("weight_mask", "weight_values")  # compact.py's sparse form of weight_packed


def _scheme(m: QuantLinear) -> dict:
    """compressed-tensors weight args for one QuantLinear."""
    args = {"num_bits": m.bits, "type": "int", "symmetric": m.symmetric, "dynamic": False,
            "observer": "minmax", "actorder": None}
    if m.symmetric and m.group_size == -1:
        args.update(strategy="channel", group_size=None)
    elif m.symmetric:
        args.update(strategy="group", group_size=m.group_size)
    else:  # see the module docstring: "block" keeps the int8 zero points unpacked
        args.update(strategy="block", group_size=None,
                    block_structure=[1, m.in_features if m.group_size == -1 else m.group_size])
    return args


def _plain_group_index(m: QuantLinear) -> bool:
    if m.g_idx is None:
        return True
    default = torch.arange(m.in_features, device=m.g_idx.device) // (m.group_size if m.group_size > 0 else m.in_features)
    return torch.equal(m.g_idx.long(), default)


def quantization_config(model: nn.Module) -> dict:
    """The compressed-tensors `quantization_config` for a model's QuantLinear modules."""
    qls = quant_linears(model)
    if not qls:
        raise ArtifactError("the model has no QuantLinear modules: quantize it first")
    groups: dict[str, tuple[dict, list[str]]] = {}
    for name, m in qls.items():
        if not _plain_group_index(m):
            raise ArtifactError(f"{name} has a permuted group index (g_idx), which the export does not support")
        args = _scheme(m)
        groups.setdefault(json.dumps(args, sort_keys=True), (args, []))[1].append(name)
    others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    single = len(groups) == 1
    config_groups = {
        f"group_{i}": {"targets": ["Linear"] if single else names, "weights": args,
                       "input_activations": None, "output_activations": None, "format": CT_FORMAT}
        for i, (args, names) in enumerate(groups.values())}
    return {"quant_method": "compressed-tensors", "format": CT_FORMAT, "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": others, "kv_cache_scheme": None}


EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _embedding_ptrs(model: nn.Module) -> set[int]:
    mods = [model.get_input_embeddings()] if hasattr(model, "get_input_embeddings") else []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {m.weight.data_ptr() for m in mods + ([head] if head is not None else []) if m is not None}


def embedding_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the token embedding and the LM head as _state_dict keeps them (a tied pair: one key)."""
    ptrs, keys = _embedding_ptrs(model), {}
    for key, t in model.state_dict().items():
        if t.data_ptr() in ptrs:
            keys.setdefault(t.data_ptr(), key)
    return list(keys.values())


def _state_dict(model: nn.Module, embeddings: str | None = None) -> dict[str, torch.Tensor]:
    """Dense tensors as they are, QuantLinear buffers under compressed-tensors names; tied copies dropped.
    embeddings: store the token embedding and LM head (one tensor when tied) in this float dtype."""
    qls = quant_linears(model)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    embed = _embedding_ptrs(model) if embeddings else set()
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in qls:
            continue
        if t.data_ptr() in seen and t.numel():  # a tied weight (lm_head = embed_tokens)
            continue
        seen.add(t.data_ptr())
        out[key] = t.detach().cpu().contiguous()
        if t.data_ptr() in embed:
            out[key] = out[key].to(EMBEDDING_DTYPES[embeddings])
    for name, m in qls.items():
        out[f"{name}.weight_packed"] = m.packed_codes().detach().cpu().contiguous()
        out[f"{name}.weight_scale"] = m.scales.detach().cpu().contiguous()
        out[f"{name}.weight_shape"] = torch.tensor([m.out_features, m.in_features], dtype=torch.int64)
        if not m.symmetric:
            off = 1 << (m.bits - 1)
            out[f"{name}.weight_zero_point"] = (m.zeros.detach().cpu().to(torch.int16) - off).to(torch.int8)
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias.detach().cpu().contiguous()
    return out


def write_quantized(model: nn.Module, directory: str | os.PathLike, tokenizer=None,
                    embeddings: str | None = None) -> None:
    """Write model (with QuantLinear modules) as a compressed-tensors HF directory into `directory`.

    embeddings: "float16" or "bfloat16" stores the token embedding and the LM head (once when tied)
    in that dtype (half the bytes of float32; loaders upcast them to the model's dtype)."""
    from safetensors.torch import save_file

    if embeddings is not None and embeddings not in EMBEDDING_DTYPES:
        raise ConfigError(f"embeddings={embeddings!r}: choose from {', '.join(EMBEDDING_DTYPES)}")
    directory = Path(directory)
    config = copy.deepcopy(model.config)
    config.quantization_config = quantization_config(model)
    config.save_pretrained(directory)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(directory)
    save_file(_state_dict(model, embeddings), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_quantized(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """write_quantized, atomically: `out_dir` appears (or is replaced) only once it is complete."""
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_quantized(model, tmp, tokenizer)
    return Path(out_dir)


export_compressed_tensors = save_quantized


def _weight_args(qcfg: dict, name: str) -> dict:
    for group in qcfg["config_groups"].values():
        if group["targets"] == ["Linear"] or name in group["targets"]:
            return group["weights"]
    raise ArtifactError(f"no quantization scheme for {name} in the checkpoint's config")


def grid_from_tensors(args: dict, tensors: dict, name: str) -> QuantParams:
    """The QuantParams of packed linear `name` from its compressed-tensors leaves (all but the codes)."""
    bits, sym = int(args["num_bits"]), bool(args["symmetric"])
    out, cols = (int(v) for v in tensors[f"{name}.weight_shape"].tolist())
    scales = tensors[f"{name}.weight_scale"]
    if args["strategy"] == "group":
        group_size = int(args["group_size"])
    elif args["strategy"] == "block":
        group_size = int(args["block_structure"][1])
    elif args["strategy"] == "channel":
        group_size = cols
    else:
        raise ArtifactError(f"{name}: weight strategy {args['strategy']!r} is not supported; slimtune reads "
                            "integer 'group', 'channel' and 'block' grids")
    if group_size == cols and scales.shape[1] == 1:
        group_size = -1  # one group per row
    off = 1 << (bits - 1)
    if sym:
        zeros = torch.full(scales.shape, off, dtype=torch.int32)
    elif tensors[f"{name}.weight_zero_point"].shape == scales.shape:  # int8, unpacked (slimtune's block layout)
        zeros = tensors[f"{name}.weight_zero_point"].to(torch.int32) + off
    else:  # int32 packed along the output dimension (the group/channel layout llm-compressor writes)
        zeros = unpack(tensors[f"{name}.weight_zero_point"].t().contiguous(), bits, out).t().to(torch.int32)
    return QuantParams(bits, group_size, sym, scales, zeros, tensors.get(f"{name}.weight_g_idx"))


def _params_from_tensors(args: dict, tensors: dict, name: str) -> tuple[QuantParams, torch.Tensor]:
    params = grid_from_tensors(args, tensors, name)
    out, cols = (int(v) for v in tensors[f"{name}.weight_shape"].tolist())
    codes = unpack(tensors[f"{name}.weight_packed"], params.bits, cols)
    if codes.shape[0] != out:
        raise ArtifactError(f"{name}: packed weight has {codes.shape[0]} rows, expected {out}")
    return params, codes


def read_packed_layers(model_dir: str | os.PathLike):
    """Yield (name, QuantParams, uint8 codes) for every packed linear of a save_quantized directory,
    one at a time, without building the model (for `slimtune inspect`)."""
    from safetensors import safe_open

    path = Path(model_dir)
    qcfg = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    with safe_open(str(path / WEIGHTS_FILE), "pt") as st:
        keys = set(st.keys())
        for name in sorted(k[:-len(".weight_packed")] for k in keys if k.endswith(".weight_packed")):
            tensors = {f"{name}.{leaf}": st.get_tensor(f"{name}.{leaf}")
                       for leaf in _LEAVES
                       if f"{name}.{leaf}" in keys}
            yield (name, *_params_from_tensors(_weight_args(qcfg, name), tensors, name))


def load_quantized(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None) with QuantLinear modules restored exactly from save_quantized's output."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(model_dir)
    if not (path / "config.json").is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"{path} is not a quantized model directory (needs config.json and {WEIGHTS_FILE})")
    config = AutoConfig.from_pretrained(path)
    qcfg = getattr(config, "quantization_config", None)
    qcfg = qcfg.to_dict() if hasattr(qcfg, "to_dict") else qcfg
    if not qcfg or qcfg.get("quant_method") != "compressed-tensors" or qcfg.get("format") != CT_FORMAT:
        raise ArtifactError(f"{path} holds no {CT_FORMAT} compressed-tensors quantization config")
    del config.quantization_config
    tensors = load_file(str(path / WEIGHTS_FILE))
    names = sorted({k[:-len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")})
    layers = {name: _params_from_tensors(_weight_args(qcfg, name), tensors, name) for name in names}
    return build_quantized(path, config, layers, tensors, dtype), read_tokenizer(path)


def build_quantized(path: Path, config, layers: dict[str, tuple[QuantParams, torch.Tensor]],
                    tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """The model of `config` with a QuantLinear per entry of `layers` (name -> (grid, codes)) and every other
    weight from `tensors` (the layers' own leaves in it are skipped); a mismatch is named."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        cls = AutoModelForCausalLM if is_causal_config(config) else AutoModel
        model = cls.from_config(config, dtype=dtype)
    tensors = dict(tensors)
    for name, (params, codes) in layers.items():
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise ArtifactError(f"{path}: packed layer {name} is not a module of the model its config describes") from e
        bias = tensors.pop(f"{name}.bias", None)
        _set_module(model, name, QuantLinear.from_codes(params, codes, bias))
        for leaf in _LEAVES + _COMPACT_LEAVES:
            tensors.pop(f"{name}.{leaf}", None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in layers]
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ArtifactError(f"{path}: checkpoint does not match the model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    return model.eval()


def read_tokenizer(path: Path):
    """The directory's tokenizer, or None when it holds none."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None
