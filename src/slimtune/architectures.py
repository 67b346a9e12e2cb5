"""What slimtune knows about each model family, in one place.

Per family: whether it is a causal LM, the roles of the linear modules inside a transformer
block (attention q/k/v/o, MLP gate/up/down; fused qkv or gate_up where a family fuses them),
the modules kept dense by default, and where the head counts live in the config. Targets,
skip lists and Shears' rank groups are all read from here, with one name matcher (`matches`).
A new family is one entry in ARCHITECTURES.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError

# Shears groups the adapters of a block by role: one rank for q/k/v, one for gate/up, one for down.
SHEARS_GROUPS = {"q": "qkv", "k": "qkv", "v": "qkv", "qkv": "qkv", "gate": "gate_up", "up": "gate_up",
                 "gate_up": "gate_up", "down": "down"}
_REGEX_CHARS = set("().+^$|\\")


@dataclass(frozen=True)
class Architecture:
    """A model family: block-relative module paths by role, and its defaults."""

    name: str
    model_types: tuple[str, ...]
    causal: bool
    roles: dict[str, str]                       # role -> module path inside a block
    keep_dense: tuple[str, ...] = ()            # patterns no compressor touches by default
    kv_heads_key: str | None = "num_key_value_heads"

    @property
    def default_targets(self) -> tuple[str, ...]:
        """The linears an adapter wraps by default: every role of the block."""
        return tuple(self.roles.values())

    def role(self, path: str) -> str | None:
        """The role of a block-relative module path ('self_attn.q_proj' -> 'q'), or None."""
        exact = [r for r, p in self.roles.items() if p == path]
        return exact[0] if exact else None

    def group_kind(self, path: str) -> str:
        """Shears' group of a block-relative path: qkv, gate_up, down, or the module on its own
        (named by its last component when that is unique among the roles, else by its path)."""
        role = self.role(path)
        if role in SHEARS_GROUPS:
            return SHEARS_GROUPS[role]
        last = path.rsplit(".", 1)[-1]
        clashes = sum(p.rsplit(".", 1)[-1] == last for p in self.roles.values())
        return last if clashes <= 1 else path

    def heads(self, config) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dimension) from a model config."""
        n_heads = int(config.num_attention_heads)
        n_kv = int(getattr(config, self.kv_heads_key, None) or n_heads) if self.kv_heads_key else n_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        return n_heads, n_kv, int(head_dim)


_LLAMA_ROLES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), True, _LLAMA_ROLES),
    # Gemma-3 alternates sliding-window and full-attention layers with different RoPE bases; the
    # layer-by-layer runner captures each layer's own inputs, so nothing else differs here.
    Architecture("gemma3", ("gemma3_text", "gemma3"), True, _LLAMA_ROLES),
    Architecture("phi3", ("phi3",), True, {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj",
                                          "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}),
    Architecture("bert", ("bert", "roberta"), False,
                 {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                  "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
                 keep_dense=("pooler.dense",), kv_heads_key=None),
)}
_BY_MODEL_TYPE = {t: a for a in ARCHITECTURES.values() for t in a.model_types}


def architecture_of(model_or_config) -> Architecture | None:
    """The model's family entry, or None for a model type slimtune has no map for."""
    config = getattr(model_or_config, "config", model_or_config)
    return _BY_MODEL_TYPE.get(getattr(config, "model_type", None))


def is_causal_config(config) -> bool:
    """Whether a config describes a causal LM (loaded with its LM head) rather than an encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    if archs:
        return False
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def require_causal_lm(model: nn.Module, what: str) -> None:
    """Refuse an encoder (or any model without an LM head) for a stage that scores text."""
    config = getattr(model, "config", None)
    if config is not None and is_causal_config(config) and model.get_output_embeddings() is not None:
        return
    kind = getattr(config, "model_type", type(model).__name__)
    raise ConfigError(f"{what} needs a causal language model, but this is an encoder without an LM head "
                      f"({kind}); slimtune sparsifies, quantizes and inspects encoders, but scores tasks, "
                      "perplexity and fine-tuning losses with a causal LM's log-likelihoods")


def model_family(model: nn.Module) -> str:
    arch = architecture_of(model)
    return arch.name if arch else getattr(getattr(model, "config", None), "model_type", "")


# ---- names ----------------------------------------------------------------------------------

def matches(name: str, pattern: str) -> bool:
    """One matcher for targets, skip lists and groups: a pattern matches a module whose name equals
    it or ends with '.pattern'; a glob matches the full name ('model.layers.*.mlp.*'); a pattern
    with regex syntax (or prefixed 're:') fully matches the full name or its last component
    ('[qk]_proj', '.*layers\\.1\\..*')."""
    if pattern.startswith("re:"):
        return _regex(name, pattern[3:], strict=True)
    if name == pattern or name.endswith("." + pattern):
        return True
    globby = any(c in pattern for c in "*?[")
    if globby and fnmatch.fnmatchcase(name, pattern):
        return True
    if globby or any(c in _REGEX_CHARS for c in pattern):
        return _regex(name, pattern, strict=not globby)
    return False


def _regex(name: str, pattern: str, strict: bool) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None or re.fullmatch(pattern, name.rsplit(".", 1)[-1]) is not None
    except re.error as e:
        if not strict:  # a glob such as '*.dense' is not a regex; it simply did not match
            return False
        raise ConfigError(f"module pattern {pattern!r} is not a valid regular expression: {e}") from e


def matches_any(name: str, patterns) -> bool:
    return any(matches(name, p) for p in patterns)


_BLOCK = re.compile(r"^(.*?\.\d+)\.(.+)$")  # 'model.layers.3' + 'self_attn.q_proj'


def split_block(module: str) -> tuple[str, str]:
    """('model.layers.3', 'self_attn.q_proj') for a module inside a numbered block, else ('', module)."""
    m = _BLOCK.match(module)
    return (m.group(1), m.group(2)) if m else ("", module)


# ---- blocks -----------------------------------------------------------------------------------

def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, ModuleList) of the model's stack of transformer blocks."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) > 0
                  and any(isinstance(m, nn.Linear) for m in mod[0].modules())]
    exact = [c for c in candidates if len(c[1]) == n_layers]
    if exact or candidates:
        return (exact or candidates)[0]
    raise ConfigError(f"{type(model).__name__} has no stack of decoder layers (a ModuleList of blocks "
                      "with linear layers); layer-by-layer calibration cannot run on it")


def block_linears(model: nn.Module, linears: dict) -> list[str]:
    """The names in `linears` that sit inside the stack of transformer blocks (all of them for a
    model without one), minus the family's keep-dense modules."""
    try:
        prefix, _ = decoder_layers(model)
        inside = [n for n in linears if n.startswith(prefix + ".")]
    except ConfigError:
        inside = list(linears)
    arch = architecture_of(model)
    keep = arch.keep_dense if arch else ()
    return [n for n in inside if not matches_any(n, keep)]
