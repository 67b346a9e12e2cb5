"""Width dimensions of the frozen base (LoNAS, EFTNAS) from the architecture map.

  mlp_width_dimensions  per block, the MLP's intermediate channels: gate and up 'out' (with their
                        adapters' B rows) bound together with down 'in' (with down's adapter A columns)
  head_dimensions       per block, attention heads in whole KV groups: q 'out' and o 'in' per group of
                        heads, k and v 'out' per KV head; a choice counts KV groups (MHA: heads)

Choices are fractions of the full width, rounded to a multiple of `multiple` channels (at least one
step), distinct and descending. Sub-networks keep the first channels / heads: reorder them by
importance first (EFTNAS) if the first ones are not the ones to keep.
"""

from __future__ import annotations

from torch import nn

from ..architectures import architecture_of, decoder_layers
from ..errors import ConfigError
from .elastic import Binding, Dimension, axis_size

MLP_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5)  # LoNAS' LLaMA-7B widths: 11008 ... 5504
HEAD_FRACTIONS = (1.0, 0.75, 0.5)


def _choices(full: int, fractions, step: int = 1) -> list[int]:
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"width fractions are numbers in (0, 1], got {list(fractions)}")
    out = {max(step, int(round(full * f / step)) * step) for f in fractions}
    return sorted((c for c in out if c <= full), reverse=True)


def _blocks(model: nn.Module):
    arch = architecture_of(model)
    if arch is None:
        raise ConfigError(f"{type(model).__name__} has no entry in slimtune's architecture map; width dimensions "
                          "need its roles (q/k/v/o, gate/up/down)")
    prefix, layers = decoder_layers(model)
    return arch, [f"{prefix}.{i}" for i in range(len(layers))]


def mlp_width_dimensions(model: nn.Module, fractions=MLP_FRACTIONS, multiple: int = 1) -> list[Dimension]:
    """One dimension per block, '<block>:mlp', over the MLP's intermediate channels."""
    arch, blocks = _blocks(model)
    if "gate_up" in arch.roles:
        raise ConfigError(f"{arch.name} fuses gate and up into one module; elastic MLP widths need them apart")
    if "up" not in arch.roles or "down" not in arch.roles:
        raise ConfigError(f"{arch.name} has no up/down roles in the architecture map")
    dims = []
    for block in blocks:
        outs = [f"{block}.{arch.roles[r]}" for r in ("gate", "up") if r in arch.roles]
        down = f"{block}.{arch.roles['down']}"
        full = axis_size(model.get_submodule(down), "in")
        if any(axis_size(model.get_submodule(m), "out") != full for m in outs):
            raise ConfigError(f"{block}: the MLP's gate/up outputs do not match down's inputs ({full})")
        dims.append(Dimension(f"{block}:mlp", _choices(full, fractions, multiple),
                              [*(Binding(m, "out") for m in outs), Binding(down, "in")]))
    return dims


def head_dimensions(model: nn.Module, fractions=HEAD_FRACTIONS) -> list[Dimension]:
    """One dimension per block, '<block>:heads', over whole KV groups (q heads of a group go together)."""
    arch, blocks = _blocks(model)
    if "qkv" in arch.roles:
        raise ConfigError(f"{arch.name} fuses q, k and v into one module; elastic heads need them apart")
    n_heads, n_kv, head_dim = arch.heads(model.config)
    if n_heads % n_kv:
        raise ConfigError(f"{n_heads} query heads do not split into {n_kv} KV groups")
    per_group = n_heads // n_kv
    dims = []
    for block in blocks:
        name = {r: f"{block}.{arch.roles[r]}" for r in ("q", "k", "v", "o")}
        if axis_size(model.get_submodule(name["q"]), "out") != n_heads * head_dim:
            raise ConfigError(f"{name['q']} does not have {n_heads} heads of {head_dim} outputs")
        dims.append(Dimension(f"{block}:heads", _choices(n_kv, fractions),
                              [Binding(name["q"], "out", per_group * head_dim), Binding(name["k"], "out", head_dim),
                               Binding(name["v"], "out", head_dim), Binding(name["o"], "in", per_group * head_dim)]))
    return dims
