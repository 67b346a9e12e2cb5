"""NLS and LoNAS on encoder classifiers (`finetune --model <bert-like> --adapter nls [--widths mlp,heads]`).

Elastic LoRA ranks on the block's projections, and with `widths` elastic base widths bound to the same
modules' adapters (nas.lonas.width_dimensions from the architecture map): BERT's intermediate channels
(intermediate.dense outputs + output.dense inputs) and its attention heads (query / key / value rows per
head + attention.output.dense columns; BERT has one head per KV group). They train with the new
classification head (and pooler), the step's configurations sampled per optimizer step as on the decoder
path (nas.ElasticSampler: uniform, or sandwich through train.Objective). With width_order magnitude the
channels and heads are reordered before training.

The artifact is a super-adapter like a decoder's (adapter_config.json, its weights, elastic_config.json,
elastic_history.json) that carries its own base in peft_io.BASE_MODEL_DIR: the encoder's frozen weights
(in their trained order) with the head trained beside the adapter, a sequence-classifier directory.
`base_of_adapter` finds it, so search, extract and merge run as for decoders: `extract` writes the
sub-adapter with its widths (subnetwork.json), `merge` the physically smaller classifier, whose fewer BERT
heads or per-layer widths are recorded in slimtune_widths.json (nas.lonas.shrink_merged) and rebuilt by
load_model / load_classifier.
"""

from __future__ import annotations

from pathlib import Path

from ..adapters.peft_io import BASE_MODEL_DIR
from ..errors import ConfigError


def check_encoder_options(cfg, model) -> None:
    """What the encoder path does not offer, refused before any model is loaded: elastic widths need the
    family's roles in the architecture map."""
    if cfg.adapter in ("adalora", "paca"):
        raise ConfigError(f"adapter {cfg.adapter} is for causal LMs here; encoder classifiers train with full, lora "
                          "or nls (elastic ranks, and base widths with --widths mlp,heads)")
    if cfg.sparse_adapter or cfg.quant_aware:
        raise ConfigError("encoder classifiers train fully (adapter full), with LoRA (lora) or elastic LoRA and widths "
                          "(nls, LoNAS); sparse and quantization-aware adapters are for causal LMs here")
    if cfg.adapter == "nls" and cfg.importance:
        raise ConfigError("importance scores come from full fine-tuning or a merged LoRA (adapter full / lora); "
                          "an nls super-adapter's sub-networks are searched instead (slimtune search)")
    if cfg.widths:
        from ..architectures import ARCHITECTURES, architecture_of
        from .model import _config

        config = _config(model)[1]
        if config is not None and architecture_of(config) is None:
            known = sorted(t for a in ARCHITECTURES.values() if not a.causal for t in a.model_types)
            raise ConfigError(f"elastic widths {list(cfg.widths)} need the block roles of the model family in "
                              f"slimtune's architecture map, which has no {config.model_type!r} (encoders: "
                              f"{', '.join(known)}); drop --widths to train elastic ranks only")


def add_elastic(net, names: list[str], cfg, seed: int):
    """Width dimensions (reordered as asked), elastic LoRA layers on `names`: (space, sampler, maximal rank,
    rank space)."""
    from ..adapted import check_adapter_args
    from ..adapters import add_lora
    from ..nas import ElasticSampler
    from ..nas.lonas import build_space, width_dimensions
    from ..nas.reorder import reorder

    r_max, rank_space = check_adapter_args("nls", cfg.rank, cfg.rank_space, cfg.groups)
    width_dims = []
    if cfg.widths:
        width_dims = width_dimensions(net, cfg.widths, cfg.mlp_fractions, cfg.head_fractions)
        reorder(net, width_dims, cfg.width_order)  # the saved base holds the new order: no width_order.json
    add_lora(net, names, r=r_max, alpha=cfg.alpha, dropout=0.05 if cfg.dropout is None else cfg.dropout, seed=seed,
             rank_space=rank_space)
    space = build_space(net, names, rank_space, cfg.groups, width_dims)
    return space, ElasticSampler(net, space, seed=seed, rule=cfg.sampler), r_max, rank_space


def save_super_adapter(net, tokenizer, directory: str | Path, final: str | Path, space, sampler, model) -> None:
    """The super-adapter into `directory` (to be renamed `final`), its base classifier in BASE_MODEL_DIR (with
    the recorded widths of `model` when that is an extracted sub-network)."""
    from ..adapters import save_adapter
    from ..widths_io import copy_widths

    base = Path(directory) / BASE_MODEL_DIR
    state = {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if ".lora_" not in k}
    net.save_pretrained(base, state_dict=state)
    tokenizer.save_pretrained(base)
    copy_widths(model, base)
    save_adapter(net, directory, base_model_name_or_path=str(Path(final) / BASE_MODEL_DIR))
    space.save(directory)
    sampler.save_checkpoint(directory)
