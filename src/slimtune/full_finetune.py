"""Full fine-tuning, every weight trained (finetuning.finetune hands `adapter full` of a causal LM here; the
encoder classifier's form is classify/stage.py, which shares `save_tuned`).

A causal LM trains on its task's completion tokens with the adapters' trainer and data (train.train,
ExampleDataset), learning rate 5e-5 unless given, and is written as a whole model directory (config,
safetensors, tokenizer) with a manifest whose lineage records the training examples, so `evaluate` refuses
them. With importance, importance.json holds the first-order head / neuron scores summed over every optimizer
step (nas.importance.ImportanceCallback, in the format `slimtune importance` writes): EFTNAS' decoder teacher,
which `space` reads as its own importance and `supernet --teacher` distils from.

A sparse base (at least adapted.SPARSE_BASE_MIN zeros in its block linears) keeps its zeros: `KeepZeros`
clears the gradient of every pruned entry before the optimizer step (AdamW's moments stay 0 there) and writes
the entries as zero after it (exact whatever the optimizer), so the tuned model is sparse to the last zero. A
packed INT4 base, or any quantized layer, is refused: its weights are codes on a grid, not trainable floats.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import lineage
from .configs import FinetuneConfig
from .data import DEFAULT_TASK
from .errors import ConfigError


class KeepZeros(TrainerCallback):
    """Every weight of `names` that is zero now stays zero through training (module docstring)."""

    def __init__(self, model, names: list[str]):
        self.weights = [model.get_submodule(n).weight for n in names]
        self.pruned = [w.detach() == 0 for w in self.weights]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for w, pruned in zip(self.weights, self.pruned):
            if w.grad is not None:
                w.grad.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        for w, pruned in zip(self.weights, self.pruned):
            w.masked_fill_(pruned, 0.0)


def _quantized_error(model, what: str) -> ConfigError:
    return ConfigError(f"full fine-tuning trains float weights, and {model} is quantized ({what}): its weights are "
                       "INT4 codes on a grid. Fine-tune the float (or sparse) model it was made from and quantize the "
                       "result, or train an adapter on it (--adapter lora --quant-aware)")


def save_tuned(out: Path, net, tokenizer, *, model, task, importance, method: str, config: dict, metrics: dict,
               started: float, seed: int, checkpoints: Path, overwrite: bool = False, write=None,
               teacher=None) -> Path:
    """Write a fully fine-tuned model (+ importance.json, + the input's per-layer widths file) with a manifest
    whose lineage adds its training examples (and a distillation `teacher`'s lineage); then drop the run's
    checkpoints. Rank 0 writes, the others wait. `write(tmp)`, when given, writes the trained artifact instead
    of the model (an encoder's super-adapter)."""
    from .artifacts import atomic_dir, write_manifest
    from .train import barrier, is_main_process
    from .widths_io import copy_widths

    for p in net.parameters():
        p.requires_grad_(False)
    if not is_main_process():
        barrier()
        return out
    with atomic_dir(out, overwrite) as tmp:
        if write is not None:
            write(tmp)
        else:
            net.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            copy_widths(model, tmp)  # a sub-network with per-layer widths keeps its recorded shapes
        if importance is not None:
            importance.save(tmp)
        write_manifest(tmp, stage="finetune", method=method, config=config,
                       inputs={k: v for k, v in (("model", model), ("teacher", teacher)) if v and Path(str(v)).exists()}
                       or None,
                       metrics={**metrics, "parameters": sum(p.numel() for p in net.parameters()),
                                "importance_steps": importance.steps if importance is not None else None},
                       started=started, seed=seed,
                       lineage=lineage.combine(lineage.of(model), lineage.of(teacher) if teacher else [],
                                               [lineage.record("finetune", "train", task, "train", task.train, out)]))
    shutil.rmtree(checkpoints, ignore_errors=True)
    barrier()
    return out


def finetune_causal_full(model, *, out: Path, cfg: FinetuneConfig, train_overrides: dict, overwrite: bool = False,
                         progress: bool = True, started: float | None = None) -> Path:
    """Every weight of a causal LM trained on the task's completions (module docstring)."""
    from .adapted import SPARSE_BASE_MIN, check_sparse_base, zero_fraction
    from .architectures import require_causal_lm
    from .models import is_packed_quantized, load_model, target_modules
    from .nas.importance import ImportanceCallback
    from .train import build_full_train_config, train

    started = started or time.time()
    if cfg.quant_aware:
        raise ConfigError("quant_aware trains an adapter through a quantized base's grid; full fine-tuning trains the "
                          "float weights themselves (drop --quant-aware, or use --adapter lora)")
    if is_packed_quantized(model):
        raise _quantized_error(model, "packed INT4")
    config = build_full_train_config(cfg.train, **train_overrides)
    task = lineage.task_split(cfg.task or DEFAULT_TASK, cfg.split_seed)
    if not task.train:
        raise ConfigError(f"task {task.spec} has no training examples (split seed {cfg.split_seed})")
    net, tokenizer = load_model(model)
    require_causal_lm(net, "finetune")
    quantized = [n for n, m in net.named_modules() if type(m).__name__ == "QuantLinear"]
    if quantized:
        raise _quantized_error(model, f"e.g. {quantized[0]}")
    names = target_modules(net)  # the block linears: where sparsify leaves its zeros
    zeros = zero_fraction(net, names)
    if cfg.sparse_adapter:  # redundant with full (a sparse base's zeros are always kept), but must be right
        check_sparse_base(zeros, True, model)
    for p in net.parameters():
        p.requires_grad_(True)
    callbacks = [KeepZeros(net, names)] if zeros >= SPARSE_BASE_MIN else []
    if cfg.importance:
        callbacks.append(ImportanceCallback(net, source="finetune"))
    checkpoints = out.parent / f".{out.name}.checkpoints"
    trainable = sum(p.numel() for p in net.parameters())
    metrics = train(net, tokenizer, task.train, config, checkpoints, callbacks=callbacks, fresh=overwrite,
                    add_eos=task.kind == "generation", progress=progress, run_key={"model": str(model), "full": True})
    importance = callbacks[-1].importance if cfg.importance else None
    sparse = zeros >= SPARSE_BASE_MIN
    return save_tuned(out, net, tokenizer, model=model, task=task, importance=importance,
                      method="full-sparse" if sparse else "full", overwrite=overwrite, started=started, seed=config.seed,
                      config={**cfg.record(), "model": str(model), "task": task.spec, "keep_zeros": sparse,
                              "train": config.model_dump()},
                      metrics={**metrics, "trainable_parameters": trainable, "base_zero_fraction": zeros,
                               "zero_fraction": zero_fraction(net, names)},
                      checkpoints=checkpoints)
