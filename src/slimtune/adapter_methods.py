"""finetune's baseline adapters (AdaLoRA, PaCA): how each is added to the model, what training needs
(callbacks, objective terms), how the artifact is written and what the manifest records. The layers
live in adapters/adalora.py and adapters/paca.py; finetuning.py calls `setup_adapter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .train import Objective


@dataclass
class AdapterSetup:
    callbacks: list = field(default_factory=list)
    objective: Objective | None = None
    save: Callable | None = None  # (directory, base name) -> None; default save_adapter
    metrics: Callable[[], dict] = dict


def setup_adapter(adapter: str, net, names: list[str], cfg, *, rank: int, alpha: float, dropout: float, seed: int,
                  qa_weights: dict | None, tokenizer=None, examples=(), max_length: int = 256) -> AdapterSetup:
    if adapter == "adalora":
        return _adalora(net, names, cfg, alpha, dropout, seed, qa_weights)
    if adapter == "paca":
        return _paca(net, names, cfg, rank, seed, tokenizer, examples, max_length)
    raise ValueError(f"no setup for adapter {adapter!r}")


def _adalora(net, names, cfg, alpha, dropout, seed, qa_weights) -> AdapterSetup:
    from .adapters.adalora import AdaLoraCallback, add_adalora, orthogonality, rank_summary

    o = cfg.adalora
    add_adalora(net, names, r=o.init_r, alpha=alpha, dropout=dropout, seed=seed, sparse=cfg.sparse_adapter,
                quant_aware=cfg.quant_aware, qa_weights=qa_weights)
    allocate = AdaLoraCallback(net, o)
    objective = Objective(regularizers=[orthogonality(o.orth_reg_weight)] if o.orth_reg_weight > 0 else [])

    def metrics() -> dict:
        summary = allocate.summary()
        return {**summary, "rank_summary": rank_summary(summary["rank_pattern"]),
                "budget_history": allocate.budget_history}

    return AdapterSetup([allocate], objective, None, metrics)


def _paca(net, names, cfg, rank, seed, tokenizer, examples, max_length) -> AdapterSetup:
    from .adapters.paca import add_paca, input_sqnorms, paca_layers, save_paca

    o = cfg.paca
    sqnorms = None
    if o.selection == "activation":
        from .train import ExampleDataset, PadCollator

        items = ExampleDataset(list(examples)[:32], tokenizer, max_length, add_eos=False)
        collate = PadCollator(tokenizer.pad_token_id)
        batches = [collate([items[j] for j in range(i, min(i + 8, len(items)))]) for i in range(0, len(items), 8)]
        sqnorms = input_sqnorms(net, names, batches)
    add_paca(net, names, columns=o.columns, rank=rank, selection=o.selection, seed=seed,
             sparse=cfg.sparse_adapter, activation_sqnorms=sqnorms)

    def save(directory, base_name):
        save_paca(net, directory, base_model_name_or_path=base_name, selection=o.selection)

    def metrics() -> dict:
        layers = paca_layers(net)
        return {"columns": {n: len(l.columns) for n, l in layers.items()},
                "merge_error_max": max((l.merge_error() for l in layers.values()), default=0.0)}

    return AdapterSetup([], None, save, metrics)
