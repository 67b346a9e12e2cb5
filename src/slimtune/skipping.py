"""Skipped sub-blocks (EFTNAS layer skipping): attention with no heads, computed cleanly.

An elastic width of 0 (`space --skip`) empties a sub-block: its linear layers keep no rows / columns. An
MLP of intermediate width 0 then adds only its down projection's bias to the residual stream (none in
Llama), attention with 0 heads only its output projection's bias (BERT's), and torch computes that
natively: an empty matmul gives zeros, to which the bias is added. A physically smaller model does the
same with zero-size linear layers (nn.Linear(hidden, 0), nn.Linear(0, hidden)), so the super-network and
the extracted model agree.

What goes wrong natively is a generating decoder's KV cache: the layer would cache keys with no heads,
which transformers counts as an empty cache, and it reads the cache's length (the next positions, the mask
sizes) from the first layer. `make_skippable(model)` gives each attention module (the one holding q/k/v) a
forward that, while its query projection has no outputs, returns the empty result directly (the output
projection's bias where the family keeps o inside the module, else the empty context for the module that
holds o) and keeps a one-channel zero placeholder per position in the cache, so its length stays right;
with heads it runs the family's own forward. Installed by `SearchSpace.apply` for a configuration with a
0, by extraction, and by the loader (widths_io) for a model with a zero-size projection.

A whole layer whose attention and MLP are both skipped stays in the model as two empty sub-blocks rather
than being dropped: in BERT (post-norm) it still applies its two LayerNorms (and biases), so dropping it
would change the outputs; in Llama-like pre-norm models it is the identity and would cost only its two
norms (2 x hidden parameters, counted), while dropping it would renumber the layers (weights, KV-cache
indices, Gemma-3's per-layer attention types) and break the one-to-one naming between the super-network's
dimensions and the extracted model's modules that the widths file and the cost model rely on.
"""

from __future__ import annotations

from torch import nn

from .architectures import architecture_of, decoder_layers
from .errors import ConfigError

_CLASSES: dict[type, type] = {}


def _out_size(linear: nn.Module) -> int:
    active = getattr(linear, "active_out", None)  # a width-sliced linear (nas.elastic.WidthLinear)
    return linear.out_features if active is None else active


class SkippableAttention:
    """Mixed into an attention module's own class (module docstring); `slimtune_q` / `slimtune_o` are the
    module-relative names of its query projection and, when it holds one, its output projection."""

    slimtune_q: str = ""
    slimtune_o: str | None = None

    def forward(self, hidden_states, *args, **kwargs):
        if _out_size(self.get_submodule(self.slimtune_q)):
            return super().forward(hidden_states, *args, **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and getattr(self, "layer_idx", None) is not None:
            hold = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(hold, hold, self.layer_idx, kwargs=kwargs)
        empty = hidden_states[..., :0]
        return (self.get_submodule(self.slimtune_o)(empty) if self.slimtune_o else empty), None


def _skippable(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Skippable{cls.__name__}", (SkippableAttention, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


def make_skippable(model: nn.Module) -> int:
    """Give every attention module of the model the skipping forward (idempotent); returns how many."""
    arch = architecture_of(model)
    container, _, q = (arch.roles.get("q", "") if arch else "").rpartition(".")
    if not container or "o" not in arch.roles:
        raise ConfigError(f"skipping attention needs the family's q/o roles (q inside an attention module) in "
                          f"slimtune's architecture map; {type(model).__name__} has none")
    o = arch.roles["o"]
    inside = o[len(container) + 1:] if o.startswith(container + ".") else None
    prefix, layers = decoder_layers(model)
    for i in range(len(layers)):
        module = model.get_submodule(f"{prefix}.{i}.{container}")
        if not isinstance(module, SkippableAttention):
            module.__class__ = _skippable(type(module))
        module.slimtune_q, module.slimtune_o = q, inside
    return len(layers)
