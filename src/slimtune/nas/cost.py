"""What a model, or a sub-network of a search space, costs to run: the one place that counts
parameters and multiply-accumulates (MACs) per token (search objectives, EFTNAS budgets, extract's
metrics, `slimtune inspect`).

  linear_macs     every linear layer's active out × in (nn.Linear, a width-sliced one, QuantLinear, an
                  adapter layer counted as its merged base; the LM head included): MACs per token of
                  the merged (sub-)network's linear layers
  attention_macs  the attention products of one token: QKᵀ and AV, 2 · context · query features
                  (query heads × head dim); `context` is the number of positions it attends to
  model_costs     a whole model: total / block-linear / embedding parameters, linear + attention MACs per
                  token at a sequence length (each token attends to `seq_len` positions, a sliding-window
                  layer (Gemma-3 `layer_types`) to at most its window), per-block widths

Embeddings are a lookup (parameters, no MACs); norms, activations, rotary and softmax are not counted.
A QuantLinear counts out × in weights (the codes it stores), not its scales.
"""

from __future__ import annotations

from torch import nn

from ..adapters.base import AdapterLayer
from ..architectures import architecture_of, decoder_layers
from ..errors import ConfigError
from .elastic import _inside_adapter, active_size


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (AdapterLayer, nn.Linear)) or type(m).__name__ == "QuantLinear"


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer of the model (an adapter layer once, not its base_layer / factors)."""
    return {n: m for n, m in model.named_modules() if _is_linear(m) and not _inside_adapter(n, model)}


def _size(m: nn.Module, axis: str) -> int:
    if isinstance(m, AdapterLayer) or isinstance(m, nn.Linear):
        return active_size(m, axis)
    return m.out_features if axis == "out" else m.in_features  # QuantLinear


def linear_macs(model: nn.Module, space=None, config: dict[str, int] | None = None) -> int:
    """Multiply-accumulates per token of the linear layers once adapters are merged: active out × in of
    every linear layer, LM head included. With a `space`, the sizes `config` selects (without: the
    sizes the layers use now). Attention products grow with the context: `attention_macs`."""
    axes = space.module_axes(config or {}) if space is not None else {}
    total = 0
    for name, m in linear_modules(model).items():
        sizes = axes.get(name, {})
        total += sizes.get("out", _size(m, "out")) * sizes.get("in", _size(m, "in"))
    return total


def attention_macs(query_features: int, context: int) -> int:
    """QKᵀ and AV of one token over `context` positions: 2 · context · (query heads × head dim)."""
    return 2 * int(context) * int(query_features)


def _contexts(config, n_blocks: int, seq_len: int) -> list[int]:
    """Positions each block's attention sees for a token at `seq_len`: a sliding-window layer at most its window."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not types or not window or len(types) != n_blocks:
        return [seq_len] * n_blocks
    return [min(seq_len, int(window)) if t == "sliding_attention" else seq_len for t in types]


def block_widths(model: nn.Module) -> list[dict[str, int]] | None:
    """Per block: MLP intermediate width, query heads and KV heads (None without an architecture map)."""
    arch = architecture_of(model)
    if arch is None:
        return None
    prefix, layers = decoder_layers(model)
    _, _, head_dim = arch.heads(model.config)
    out = []
    for i in range(len(layers)):
        get = {r: model.get_submodule(f"{prefix}.{i}.{p}") for r, p in arch.roles.items()}
        row = {}
        if "down" in get:
            row["intermediate"] = _size(get["down"], "in")
        if "q" in get and "k" in get:
            row["heads"] = _size(get["q"], "out") // head_dim
            row["kv_heads"] = _size(get["k"], "out") // head_dim
        out.append(row)
    return out


def parameter_count(model: nn.Module) -> int:
    """Every parameter once (tied embeddings once), a QuantLinear's weight as out × in."""
    return sum(p.numel() for p in model.parameters()) + sum(
        m.out_features * m.in_features for m in model.modules() if type(m).__name__ == "QuantLinear")


def _linear_params(m: nn.Module) -> int:
    base = m.base_layer if isinstance(m, AdapterLayer) else m
    o, i = _size(m, "out"), _size(m, "in")
    return o * i + (o if getattr(base, "bias", None) is not None else 0)


def model_costs(model: nn.Module, seq_len: int = 128) -> dict:
    """Parameters and MACs per token of a model at its current (active) widths (module docstring)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"seq_len must be a positive number of tokens, got {seq_len!r}")
    linears = linear_modules(model)
    try:
        prefix, layers = decoder_layers(model)
    except ConfigError:
        prefix, layers = None, []
    in_blocks = {n: m for n, m in linears.items() if prefix is not None and n.startswith(prefix + ".")}
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    widths = block_widths(model) if layers else None
    attention = None
    arch = architecture_of(model)
    if arch is not None and "q" in arch.roles and layers:
        contexts = _contexts(model.config, len(layers), seq_len)
        attention = sum(attention_macs(_size(model.get_submodule(f"{prefix}.{i}.{arch.roles['q']}"), "out"), c)
                        for i, c in enumerate(contexts))
    linear = linear_macs(model)
    costs = {"parameters": parameter_count(model),
             "block_linear_parameters": sum(_linear_params(m) for m in in_blocks.values()),
             "embedding_parameters": embeddings,
             "seq_len": seq_len, "linear_macs_per_token": linear,
             "attention_macs_per_token": attention,
             "macs_per_token": linear + (attention or 0),
             "blocks": len(layers)}
    if widths:
        uniform = all(w == widths[0] for w in widths)
        costs["widths"] = widths[0] if uniform else None
        if not uniform:
            costs["block_widths"] = widths
    return costs
