"""An adapter on its base: the checks of finetune's adapter options, the base facts they need
(zeros, the float weights a quantization-aware adapter merges into), the method names, and
loading an adapter in its own mode (sparse, quantization-aware, elastic)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .adapters import load_adapter
from .artifacts import recorded_path
from .errors import ArtifactError, ConfigError
from .models import load_model



def check_adapter_args(adapter: str, rank: int | None, rank_space, groups: str) -> tuple[int, list[int] | None]:
    """finetune's (maximal rank, rank space or None) from its validated config (configs.FinetuneConfig):
    lora defaults to rank 16; nls to Shears' space [r, 3r/4, r/2] with r = 32."""
    from .adapters.lora import check_rank_space

    if adapter in ("lora", "adalora", "paca"):  # adalora's ranks: init_r; paca's columns: rank-equivalent
        return rank or 16, None
    if rank_space is None:
        r = rank or 32
        rank_space = sorted({r, max(1, 3 * r // 4), max(1, r // 2)}, reverse=True)
    space = check_rank_space(list(rank_space), rank)
    return space[0], space


def float_weights(float_base: str | Path, names: Sequence[str]) -> dict:
    """The float weights of `names` in `float_base` (QA-SparsePEFT with qa_weights='float')."""
    net, _ = load_model(float_base)
    modules = dict(net.named_modules())
    missing = [n for n in names if n not in modules or not hasattr(modules[n], "weight")]
    if missing:
        raise ConfigError(f"float base {float_base} has no linear module {missing[0]}; pass the float model "
                          "the quantized base was made from")
    return {n: modules[n].weight.detach().float() for n in names}


def quantized_input(model: str | Path) -> str | None:
    """The model a slimtune quantize artifact was made from (the float weights of 'float' QA)."""
    try:
        return recorded_path(model, "model")
    except ArtifactError:
        return None


def zero_fraction(net, names: Sequence[str]) -> float:
    modules = dict(net.named_modules())
    zeros = total = 0
    for n in names:
        w = modules[n].weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


SPARSE_BASE_MIN = 0.05  # a base with fewer zeros in its adapted layers is dense for SparsePEFT


def load_adapted(model: str | Path, adapter: str | Path, trainable: bool = False):
    """(model, tokenizer) with the adapter applied in its own mode (sparse, quantization-aware)."""
    from .adapters.peft_io import adapter_mode, adapter_modules, read_adapter_config
    from .nas import ELASTIC_CONFIG, ElasticSpace
    from .nas.lonas import apply_subnetwork
    from .nas.reorder import apply_saved_order

    from .adapters.paca import is_paca, load_paca

    if is_paca(adapter):  # PaCA columns: slimtune's own format
        net, tokenizer = load_model(model)
        load_paca(net, adapter, trainable=trainable)
        return net, tokenizer
    mode = adapter_mode(adapter)
    read_adapter_config(adapter)
    net, tokenizer = load_model(model)
    qa = None
    if mode["quant_aware"] and mode["qa_weights"] == "float":
        qa = float_weights(mode["float_base"], adapter_modules(adapter))
    apply_saved_order(net, adapter)  # a LoNAS base reordered by importance before training
    load_adapter(net, adapter, trainable=trainable, qa_weights=qa)
    if (Path(adapter) / ELASTIC_CONFIG).is_file():
        ElasticSpace.load(adapter).bind(net)
    apply_subnetwork(net, adapter)  # an extracted LoNAS sub-adapter: its widths
    return net, tokenizer


def method_name(adapter: str, sparse: bool, quant_aware: bool) -> str:
    """lora, nls, sparsepeft, sparsepeft+nls, qa-sparsepeft, qa-sparsepeft+nls (qa-lora without a mask)."""
    base = ("qa-sparsepeft" if sparse else "qa-lora") if quant_aware else ("sparsepeft" if sparse else "")
    if not base:
        return adapter
    return f"{base}+{adapter}" if adapter != "lora" else base


def resolve_qa_weights(model, quant_aware: bool, qa_weights: str, float_base) -> tuple[str, str | None]:
    """(qa_weights, float_base) of a quantization-aware adapter: 'auto' is 'float' when the float model
    the quantized base was made from is known, else 'quantized' (with a warning)."""
    from .models import is_packed_quantized, resolve_model

    if quant_aware and not is_packed_quantized(resolve_model(model)):
        raise ConfigError(f"--quant-aware needs a quantized base, and {model} is not one; quantize it first "
                          "(slimtune quantize --model ... --out DIR) and fine-tune DIR")
    if quant_aware and qa_weights in ("auto", "float") and float_base is None:
        float_base = quantized_input(model)
        if float_base is None and qa_weights == "float":
            raise ConfigError(f"qa_weights='float' needs the float model {model} was quantized from; pass float_base")
    if quant_aware and qa_weights == "auto":
        qa_weights = "float" if float_base is not None else "quantized"
        if float_base is None:
            import warnings

            warnings.warn(f"the float model {model} was quantized from is unknown, so the adapter merges into the "
                          "dequantized base (qa_weights='quantized'), which learns slowly; pass float_base to use "
                          "the float weights", stacklevel=3)
    return qa_weights, float_base


def check_sparse_base(zeros: float, sparse_adapter: bool, model) -> None:
    """A SparsePEFT adapter needs a sparse base; a plain adapter on one gets a warning (its merge fills the zeros)."""
    if sparse_adapter and zeros < SPARSE_BASE_MIN:
        raise ConfigError(f"--sparse-adapter needs a sparse base, but only {zeros:.1%} of the adapted layers' weights "
                          f"of {model} are zero; drop --sparse-adapter, or sparsify the base first (slimtune sparsify)")
    if not sparse_adapter and zeros >= SPARSE_BASE_MIN:
        import warnings

        warnings.warn(f"the base is {zeros:.0%} sparse in the adapted layers; a plain adapter's merge fills those "
                      "zeros: pass --sparse-adapter to keep them", stacklevel=3)
