"""Save and load LoRA adapters in PEFT's format (adapter_config.json + adapter_model.safetensors).

The config is written by PEFT's own `LoraConfig`, so every field PEFT expects is present; weights
use PEFT's key names (`base_model.model.<module>.lora_A.weight`). Per-module ranks and alphas go
to `rank_pattern` / `alpha_pattern`, keyed by full module name.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ArtifactError
from .lora import add_lora, check_rank_space, lora_layers

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ELASTIC_CONFIG = "elastic_config.json"  # written by nas.space.ElasticSpace


def _task_type(model: nn.Module) -> str:
    archs = getattr(getattr(model, "config", None), "architectures", None) or []
    return "CAUSAL_LM" if any(a.endswith("ForCausalLM") for a in archs) or hasattr(model, "lm_head") else "FEATURE_EXTRACTION"


def _target_spec(model: nn.Module, names: list[str]) -> list[str]:
    """Module-name suffixes when they select exactly these modules, else the full names."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    selected = {n for n, m in model.named_modules()
                if n.rsplit(".", 1)[-1] in suffixes and isinstance(m, nn.Module) and m is not head
                and not n.endswith((".base_layer", ".lora_A", ".lora_B"))}
    return suffixes if selected == set(names) else sorted(names)


def save_adapter(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA layers, at their active ranks, as a PEFT LoRA adapter into `out_dir`.

    An elastic layer at active rank r' is written as the rank-r' slices A[:r'], B[:, :r'] with
    alpha' = alpha·r'/r_max, so PEFT's scaling alpha'/r' is the super-adapter's alpha/r_max.
    """
    from peft import LoraConfig

    layers = lora_layers(model)
    if not layers:
        raise ArtifactError("the model has no LoRA layers to save")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = {n: l.active_rank for n, l in layers.items()}
    alphas = {n: l.lora_alpha * l.active_rank / l.r if l.active_rank != l.r else l.lora_alpha
              for n, l in layers.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    dropout = next(iter(layers.values())).dropout
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
        target_modules=_target_spec(model, list(layers)),
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        task_type=_task_type(model), base_model_name_or_path=base_model_name_or_path,
    )
    config.save_pretrained(str(out_dir))
    tensors = {}
    for name, layer in layers.items():
        a, b = layer.active_factors()
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.detach().contiguous()
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return out_dir


def read_adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{adapter_dir} is not a PEFT adapter directory (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise ArtifactError(f"{path}: peft_type is {config.get('peft_type')!r}; slimtune loads LORA adapters")
    return config


def adapter_mode(adapter_dir: str | Path) -> dict:
    """How a slimtune adapter applies its update (from its manifest; plain LoRA for foreign adapters):
    sparse (SparsePEFT mask), quant_aware (QA-SparsePEFT), qa_weights ('quantized' or 'float') and
    float_base (the float model whose weights a 'float' QA adapter merges into)."""
    from ..artifacts import read_manifest

    mode = {"sparse": False, "quant_aware": False, "qa_weights": "quantized", "float_base": None}
    try:
        config = read_manifest(adapter_dir).get("config", {})
    except ArtifactError:
        return mode
    return {k: config.get(k, v) for k, v in mode.items()}


def load_adapter(model: nn.Module, adapter_dir: str | Path, trainable: bool = False,
                 qa_weights: dict | None = None) -> dict:
    """Wrap `model` with the LoRA adapter saved in `adapter_dir` (PEFT format) and load its weights.

    The adapter's mode (sparse, quantization-aware) comes from its manifest, and an elastic
    super-adapter's rank spaces from its elastic_config.json; `qa_weights` are the float weights
    of a 'float' quantization-aware adapter (see api.finetune).
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"{adapter_dir} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as e:
        raise ArtifactError(f"{weights_path} cannot be read ({e}); the adapter is damaged") from e
    names = module_names(tensors)
    if not names:
        raise ArtifactError(f"{weights_path} holds no LoRA weights")
    ranks = {n: tensors[f"{PREFIX}{n}.lora_A.weight"].shape[0] for n in names}
    alpha_of = _alpha_lookup(config)
    mode = adapter_mode(adapter_dir)
    layers = add_lora(model, names, r=config["r"], alpha=config["lora_alpha"],
                      dropout=config.get("lora_dropout", 0.0), rank_pattern=ranks,
                      alpha_pattern={n: alpha_of(n) for n in names}, sparse=mode["sparse"],
                      quant_aware=mode["quant_aware"], qa_weights=qa_weights)
    if (adapter_dir / ELASTIC_CONFIG).is_file():
        from ..nas.space import ElasticSpace

        for group in ElasticSpace.load(adapter_dir).groups.values():
            for name in group.modules:
                layers[name].rank_space = check_rank_space(group.space, layers[name].r)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.weight.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
            layer.lora_A.weight.requires_grad_(trainable)
            layer.lora_B.weight.requires_grad_(trainable)
    return config


def module_names(keys) -> list[str]:
    """The adapted modules named by an adapter's weight keys."""
    return sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in keys if k.startswith(PREFIX)})


def adapter_modules(adapter_dir: str | Path) -> list[str]:
    """The adapted modules of a saved adapter, read from its weight file's index (no tensors loaded)."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / WEIGHTS_FILE), "pt") as f:
        return module_names(f.keys())


def _alpha_lookup(config: dict):
    """PEFT's alpha_pattern semantics: a key matches a module whose name ends with it (regex)."""
    import re

    patterns = config.get("alpha_pattern") or {}

    def alpha(name: str) -> float:
        for key, value in patterns.items():
            if name == key or re.match(rf"(.*\.)?{key}$", name):
                return value
        return config["lora_alpha"]

    return alpha
