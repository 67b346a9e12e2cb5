"""A configuration of a search space, physically extracted into a smaller model (LoNAS' sub-networks).

`extract_subnetwork(model, space, config)` returns a copy of the model whose bound linear layers hold
only the first rows / columns the configuration keeps, and whose LoRA layers hold only the active
rank (fixed-rank layers with alpha scaled so that the scaling alpha/r is unchanged). It computes what
the width-sliced super-network computes under `space.apply(model, config)`. Where a width is uniform
across blocks the model config says so (intermediate_size, num_attention_heads, num_key_value_heads,
head_dim), so `save_pretrained` writes a model that `from_pretrained` loads; non-uniform widths run
in memory (the attention modules infer their head counts from the projections) but no stock config
can describe them; nor a width of 0 (a skipped sub-block, `skipping`), which is never written into the config.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..adapters.base import AdapterLayer, set_submodule
from ..adapters.lora import LoraLinear
from ..architectures import architecture_of, decoder_layers
from ..errors import ConfigError
from .elastic import SearchSpace


def _sliced_linear(linear: nn.Module, o: int, i: int) -> nn.Linear:
    if type(linear).__name__ == "QuantLinear":
        raise ConfigError("extracting a narrower layer from a quantized base is not supported; dequantize it first "
                          "or keep its full width")
    with warnings.catch_warnings():  # a skipped sub-block's zero-size layer: its initialisation is a no-op
        warnings.simplefilter("ignore", UserWarning)
        out = nn.Linear(i, o, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[:o, :i])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[:o])
    out.train(linear.training)
    return out


def _sliced_lora(layer: LoraLinear, o: int, i: int, r: int) -> LoraLinear:
    full = (o, i) == (layer.out_features, layer.in_features)
    base = layer.base_layer if full else _sliced_linear(layer.base_layer, o, i)
    qa_weight = None if layer.qa_weight is None else layer.qa_weight[:o, :i]
    alpha = layer.lora_alpha * r / layer.r if r != layer.r else layer.lora_alpha
    new = LoraLinear(base, r, alpha, layer.dropout, sparse=layer.sparse, quant_aware=layer.quant_aware,
                     qa_weight=qa_weight)
    with torch.no_grad():
        new.lora_A.weight.copy_(layer.lora_A.weight[:r, :i])
        new.lora_B.weight.copy_(layer.lora_B.weight[:o, :r])
    for p, q in zip(new.adapter_parameters(), layer.adapter_parameters()):
        p[1].requires_grad_(q[1].requires_grad)
    new.train(layer.training)
    return new


def extract_subnetwork(model: nn.Module, space: SearchSpace, config: dict[str, int]) -> nn.Module:
    """A physically smaller copy of `model` computing the sub-network `config` selects (module docstring)."""
    config = space.check(config)
    axes = space.module_axes(config)
    net = copy.deepcopy(model)
    for name, sizes in axes.items():
        module = net.get_submodule(name)
        if isinstance(module, AdapterLayer) and not isinstance(module, LoraLinear):
            raise ConfigError(f"{name}: extraction knows LoRA layers, not {type(module).__name__}")
        if isinstance(module, LoraLinear):
            new = _sliced_lora(module, sizes.get("out", module.out_features), sizes.get("in", module.in_features),
                               sizes.get("rank", module.active_rank))
        elif isinstance(module, nn.Linear):
            new = _sliced_linear(module, sizes.get("out", module.out_features), sizes.get("in", module.in_features))
        else:
            raise ConfigError(f"{name} is a {type(module).__name__}; extraction slices linear layers")
        set_submodule(net, name, new)
    _describe_widths(net)
    if 0 in config.values():  # a skipped sub-block (zero-size linears): attention without heads skips cleanly
        from ..skipping import make_skippable

        make_skippable(net)
    return net


def binding_shapes(sub: nn.Module, space: SearchSpace) -> dict[str, list[int]]:
    """[out, in] of every module a width dimension binds, in the sliced model: what widths_io records when no
    stock config describes the model (per-block widths, or fewer heads where the head size is derived)."""
    shapes = {}
    for d in space.dimensions.values():
        for b in d.bindings:
            m = sub.get_submodule(b.module)
            shapes[b.module] = [m.out_features, m.in_features]
    return shapes


def _describe_widths(net: nn.Module) -> None:
    """Write uniform widths into the model config (module docstring)."""
    arch = architecture_of(net)
    config = getattr(net, "config", None)
    if arch is None or config is None:
        return
    try:
        prefix, layers = decoder_layers(net)
    except ConfigError:
        return
    blocks = [f"{prefix}.{i}" for i in range(len(layers))]

    def widths(role: str, axis: str) -> set[int]:
        if role not in arch.roles:
            return set()
        mods = [net.get_submodule(f"{b}.{arch.roles[role]}") for b in blocks]
        mods = [m.base_layer if isinstance(m, AdapterLayer) else m for m in mods]
        return {m.out_features if axis == "out" else m.in_features for m in mods}

    down = widths("down", "in")
    if len(down) == 1 and 0 not in down and hasattr(config, "intermediate_size"):  # 0 (skipped): the widths file
        config.intermediate_size = down.pop()
    if not {"q", "k"} <= set(arch.roles):
        return
    _, _, head_dim = arch.heads(config)
    q, k = widths("q", "out"), widths("k", "out")
    if len(q) == 1 and len(k) == 1 and 0 not in q:
        config.head_dim = head_dim  # before the head count changes: llama derives it from hidden / heads
        config.num_attention_heads = q.pop() // head_dim
        if arch.kv_heads_key:
            setattr(config, arch.kv_heads_key, k.pop() // head_dim)
