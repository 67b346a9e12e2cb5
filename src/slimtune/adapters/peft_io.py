"""Save and load LoRA adapters in PEFT's format (adapter_config.json + adapter_model.safetensors).

The config is written by PEFT's own `LoraConfig`, so every field PEFT expects is present; weights
use PEFT's key names (`base_model.model.<module>.lora_A.weight`). Per-module ranks and alphas go
to `rank_pattern` / `alpha_pattern`, keyed by full module name.

Only a plain LoRA (no mask, no grid) is a PEFT adapter. A SparsePEFT, QA-SparsePEFT or QA-LoRA
adapter computes W + (s·B·A) ⊙ M, or Q(·) of it, which PEFT would load as a plain LoRA and
silently compute the unmasked, off-grid update. So these keep the same layout with two changes
that make every PEFT-format reader fail instead: `peft_type` names the method and says what to
do (PEFT raises a KeyError carrying that text), and the weights file is SLIMTUNE_WEIGHTS_FILE,
not the adapter_model.safetensors that tools reading the files directly look for.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ArtifactError
from .base import adapter_layers
from .lora import add_lora

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"  # plain LoRA: the name PEFT loads
SLIMTUNE_WEIGHTS_FILE = "slimtune_adapter.safetensors"  # sparse / QA: a name no PEFT-format reader picks up
ELASTIC_CONFIG = "elastic_config.json"  # written by nas.space.ElasticSpace
MODE_KEY = "slimtune"  # adapter_config.json's record of a sparse / QA adapter's mode
BASE_MODEL_DIR = "base_model"  # an adapter that carries its own base (an encoder classifier's head trained with it)

# peft_type of the adapters PEFT cannot apply; stock PEFT fails on it with a KeyError showing this text.
_NOT_PEFT = ("{kind} (slimtune): not a plain LoRA: its update is {what}, which PEFT cannot apply (as a LoRA it "
             "would compute a different function). Merge it with `slimtune merge --adapter DIR --out MERGED` "
             "and load the merged model, or load it with slimtune.api.load_adapted(base, DIR)")
_KINDS = {  # (sparse, quant_aware) -> peft_type kind
    (True, False): "SPARSEPEFT", (True, True): "QA_SPARSEPEFT", (False, True): "QA_LORA"}
_WHAT = {"SPARSEPEFT": "masked by the base's zeros, W + (s·B·A) ⊙ M",
         "QA_SPARSEPEFT": "masked by the base's zeros and rounded onto the base's INT grid, Q(W + (s·B·A) ⊙ M)",
         "QA_LORA": "rounded onto the base's INT grid, Q(W + s·B·A)"}


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


def _layers_mode(exports: dict, layers: dict) -> dict | None:
    """The sparse / QA mode every layer shares (None for plain LoRA); a mix cannot be saved as one adapter."""
    modes = {("sparse" in e.variants, "quant_aware" in e.variants,
              "quant_aware" in e.variants and getattr(layers[n], "qa_weight", None) is not None)
             for n, e in exports.items()}
    if len(modes) > 1:
        raise ArtifactError(f"the model's LoRA layers mix modes (sparse, quant_aware, float qa_weight): {sorted(modes)}; "
                            "an adapter applies one mode to every layer, so build them with one add_lora call")
    sparse, quant_aware, float_weights = modes.pop()
    return mode_record(sparse, quant_aware, "float" if float_weights else "quantized")


def mode_record(sparse: bool, quant_aware: bool, qa_weights: str | None) -> dict | None:
    """What adapter_config.json records of a sparse / quantization-aware adapter (None for plain LoRA)."""
    if not (sparse or quant_aware):
        return None
    return {"kind": _KINDS[(bool(sparse), bool(quant_aware))], "sparse": bool(sparse), "quant_aware": bool(quant_aware),
            "qa_weights": qa_weights if quant_aware else None}


def save_adapter(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA layers, at their active ranks, as a PEFT LoRA adapter into `out_dir`.

    An elastic layer at active rank r' is written as the rank-r' slices A[:r'], B[:, :r'] with
    alpha' = alpha·r'/r_max, so PEFT's scaling alpha'/r' is the super-adapter's alpha/r_max.
    Sparse and quantization-aware layers are written so that PEFT refuses them (module docstring).
    """
    layers = adapter_layers(model)
    if not layers:
        raise ArtifactError("the model has no LoRA layers to save")
    exports = {n: layer.export() for n, layer in layers.items()}  # the contract: PEFT's layout at the active rank
    exports = {n: e for n, e in exports.items() if e.rank > 0}  # a layer with no rank left (AdaLoRA) adds nothing
    if not exports:
        raise ArtifactError("every adapter layer has rank 0: there is no update to save")
    layers = {n: layers[n] for n in exports}
    factors = {n: (e.tensors["lora_A.weight"], e.tensors["lora_B.weight"]) for n, e in exports.items()}
    return write_lora(out_dir, factors, {n: e.alpha for n, e in exports.items()},
                      target_modules=_target_spec(model, list(layers)), task_type=_task_type(model),
                      dropout=next(iter(exports.values())).dropout,
                      base_model_name_or_path=base_model_name_or_path, mode=_layers_mode(exports, layers))


def write_lora(out_dir: str | Path, factors: dict, alphas: dict, *, target_modules, task_type: str,
               dropout: float = 0.0, base_model_name_or_path: str | None = None, mode: dict | None = None) -> Path:
    """Write LoRA factors {module: (A, B)} with per-module alphas as a PEFT adapter: the most common rank
    and alpha as r / lora_alpha, the others in rank_pattern / alpha_pattern. `mode` (sparse /
    quantization-aware, as adapter_config.json records it; None for plain LoRA) makes PEFT refuse it."""
    from peft import LoraConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = {n: int(a.shape[0]) for n, (a, _) in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=target_modules,
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        task_type=task_type, base_model_name_or_path=base_model_name_or_path,
    )
    config.save_pretrained(str(out_dir))
    weights_file = WEIGHTS_FILE
    for stale in (WEIGHTS_FILE, SLIMTUNE_WEIGHTS_FILE):  # never leave the other kind's weights beside these
        (out_dir / stale).unlink(missing_ok=True)
    if mode is not None:
        path = out_dir / CONFIG_FILE
        written = json.loads(path.read_text())
        written["peft_type"] = _NOT_PEFT.format(kind=mode["kind"], what=_WHAT[mode["kind"]])
        written[MODE_KEY] = mode
        path.write_text(json.dumps(written, indent=2, sort_keys=True))
        weights_file = SLIMTUNE_WEIGHTS_FILE
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.detach().contiguous()
    save_file(tensors, str(out_dir / weights_file), metadata={"format": "pt"})
    return out_dir


def _kind(config: dict) -> str | None:
    """'LORA', a slimtune kind (SPARSEPEFT, QA_SPARSEPEFT, QA_LORA), or None for anything else."""
    peft_type = str(config.get("peft_type"))
    if peft_type == "LORA":
        return "LORA"
    kind = peft_type.split(" ", 1)[0]
    return kind if kind in _WHAT and isinstance(config.get(MODE_KEY), dict) else None


def read_adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{adapter_dir} is not a PEFT adapter directory (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    if _kind(config) is None:
        raise ArtifactError(f"{path}: peft_type is {config.get('peft_type')!r}; slimtune loads LORA adapters "
                            f"and its own {', '.join(_WHAT)} adapters")
    return config


def weights_path(adapter_dir: str | Path) -> Path:
    """The adapter's weights: adapter_model.safetensors (plain LoRA) or slimtune_adapter.safetensors."""
    adapter_dir = Path(adapter_dir)
    expected = WEIGHTS_FILE if _kind(read_adapter_config(adapter_dir)) == "LORA" else SLIMTUNE_WEIGHTS_FILE
    if not (adapter_dir / expected).is_file():
        raise ArtifactError(f"{adapter_dir} has no {expected} (the weights its {CONFIG_FILE} calls for); "
                            "the adapter is incomplete: save or extract it again")
    return adapter_dir / expected


def base_of_adapter(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: the model in its BASE_MODEL_DIR when it carries one (an
    encoder classifier's super-adapter: the encoder with the head trained beside the adapter), else its
    manifest's recorded input (found again when the run directory was moved), else adapter_config.json's
    base_model_name_or_path."""
    from ..artifacts import Artifact

    if (Path(adapter_dir) / BASE_MODEL_DIR / "config.json").is_file():
        return str(Path(adapter_dir) / BASE_MODEL_DIR)

    try:
        artifact = Artifact.find(adapter_dir)
    except ArtifactError:  # damaged: the adapter config still names the base
        artifact = None
    if artifact is not None and artifact.config.get("model"):
        return artifact.base
    base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base:
        raise ArtifactError(f"adapter {adapter_dir} does not say which base model it belongs to; pass --model")
    return base


def _mode(adapter_dir: str | Path) -> dict:
    from ..artifacts import Artifact

    mode = {"sparse": False, "quant_aware": False, "qa_weights": "quantized", "float_base": None}
    try:
        artifact = Artifact.load(adapter_dir)
        manifest = {**artifact.config, "float_base": artifact.input("float_base")}
    except ArtifactError:
        manifest = {}
    recorded = read_adapter_config(adapter_dir).get(MODE_KEY) or {}
    for key in mode:
        for source in (recorded, manifest):  # adapter_config.json first: it was written with the weights
            if source.get(key) is not None:
                mode[key] = source[key]
                break
    return mode


def adapter_mode(adapter_dir: str | Path) -> dict:
    """How a slimtune adapter applies its update: sparse (SparsePEFT mask), quant_aware (QA-SparsePEFT),
    qa_weights ('quantized' or 'float') and float_base (the float model whose weights a 'float' QA
    adapter merges into). The mode comes from adapter_config.json (and, for adapters saved before it
    recorded one, the manifest); float_base from the manifest. Plain LoRA for foreign adapters."""
    mode = _mode(adapter_dir)
    if mode["quant_aware"] and mode["qa_weights"] == "float" and not mode["float_base"]:
        raise ArtifactError(f"{adapter_dir} is a quantization-aware adapter merged into float weights "
                            "(qa_weights 'float'), but its manifest (slimtune.json) names no float_base to read them "
                            "from; restore the manifest the adapter was written with")
    return mode


def peft_compatible(adapter_dir: str | Path) -> bool:
    """Whether stock `peft.PeftModel.from_pretrained` computes this adapter's trained function: True
    for a plain LoRA, False for a sparse or quantization-aware one (PEFT refuses those written by
    this version; one written as peft_type LORA by an older slimtune would load, silently wrong)."""
    config = read_adapter_config(adapter_dir)
    if _kind(config) != "LORA" or not (Path(adapter_dir) / WEIGHTS_FILE).is_file():
        return False
    mode = _mode(adapter_dir)
    return not (mode["sparse"] or mode["quant_aware"])



def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict]:
    """(adapter_config.json, its weight tensors); an ArtifactError if the weights cannot be read."""
    config = read_adapter_config(adapter_dir)
    path = weights_path(adapter_dir)
    try:
        return config, load_file(str(path))
    except Exception as e:
        raise ArtifactError(f"{path} cannot be read ({e}); the adapter is damaged") from e

def load_adapter(model: nn.Module, adapter_dir: str | Path, trainable: bool = False,
                 qa_weights: dict | None = None) -> dict:
    """Wrap `model` with the LoRA adapter saved in `adapter_dir` (PEFT format) and load its weights.

    The adapter's mode (sparse, quantization-aware) comes from adapter_mode (an elastic
    super-adapter's rank spaces are bound by nas.ElasticSpace.bind); `qa_weights` are the float weights
    of a 'float' quantization-aware adapter (see api.finetune).
    """
    adapter_dir = Path(adapter_dir)
    config, tensors = read_adapter(adapter_dir)
    path = weights_path(adapter_dir)
    names = module_names(tensors)
    if not names:
        raise ArtifactError(f"{path} holds no LoRA weights")
    _check_fits(model, adapter_dir, names, tensors)
    ranks = {n: tensors[f"{PREFIX}{n}.lora_A.weight"].shape[0] for n in names}
    alpha_of = _alpha_lookup(config)
    mode = _mode(adapter_dir)
    if mode["quant_aware"] and mode["qa_weights"] == "float" and qa_weights is None:
        raise ArtifactError(f"{adapter_dir} merges its update into the float weights its base was quantized from "
                            "(qa_weights 'float'); pass them as qa_weights, or load it with slimtune.api.load_adapted")
    layers = add_lora(model, names, r=config["r"], alpha=config["lora_alpha"],
                      dropout=config.get("lora_dropout", 0.0), rank_pattern=ranks,
                      alpha_pattern={n: alpha_of(n) for n in names}, sparse=bool(mode["sparse"]),
                      quant_aware=bool(mode["quant_aware"]), qa_weights=qa_weights)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.weight.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
            layer.lora_A.weight.requires_grad_(trainable)
            layer.lora_B.weight.requires_grad_(trainable)
    return config


def _check_fits(model: nn.Module, adapter_dir: Path, names: list[str], tensors: dict) -> None:
    """Every adapted module exists in `model` as a linear layer of the adapter's shape, else a clear error."""
    modules = dict(model.named_modules())
    for name in names:
        a, b = tensors.get(f"{PREFIX}{name}.lora_A.weight"), tensors.get(f"{PREFIX}{name}.lora_B.weight")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ArtifactError(f"{adapter_dir}: the weights of module {name} are not a LoRA pair (lora_A, lora_B); "
                                "the adapter is damaged")
        module = modules.get(name)
        shape = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if module is None or shape != (a.shape[1], b.shape[0]):
            found = "has no such module" if module is None else (
                f"has {type(module).__name__} {shape[0]}->{shape[1]}" if None not in shape
                else f"has a {type(module).__name__} there, not a linear layer")
            raise ArtifactError(f"adapter {adapter_dir} does not fit this model: it adapts {name} as a "
                                f"{a.shape[1]}->{b.shape[0]} linear layer, and the model {found}; pass the base model "
                                "the adapter was trained on (--model)")


def module_names(keys) -> list[str]:
    """The adapted modules named by an adapter's weight keys."""
    return sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in keys if k.startswith(PREFIX)})


def adapter_modules(adapter_dir: str | Path) -> list[str]:
    """The adapted modules of a saved adapter, read from its weight file's index (no tensors loaded)."""
    from safetensors import safe_open

    with safe_open(str(weights_path(adapter_dir)), "pt") as f:
        return module_names(f.keys())


def _alpha_lookup(config: dict):
    """PEFT's alpha_pattern semantics, read with PEFT's own matcher (a key matches a module whose
    name ends with it, as a regex)."""
    from peft.utils.other import get_pattern_key

    patterns = config.get("alpha_pattern") or {}

    def alpha(name: str) -> float:
        key = get_pattern_key(list(patterns), name)
        return patterns.get(key, config["lora_alpha"])

    return alpha
