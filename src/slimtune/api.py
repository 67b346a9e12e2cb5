"""One function per stage. Each reads artifacts, validates everything before work starts, and
writes one new artifact directory atomically with a `slimtune.json` manifest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from .adapters import add_lora, load_adapter, lora_layers, merge_lora, save_adapter
from .artifacts import atomic_dir, check_output_dir, read_manifest, write_json_atomic, write_manifest
from .data import DEFAULT_TASK, Task, load_task, load_text
from .errors import ArtifactError, ConfigError
from .models import DEFAULT_MODEL, load_model, target_modules
from .train import TrainConfig, train


def _train_config(train_config: TrainConfig | dict | None, **overrides: Any) -> TrainConfig:
    if isinstance(train_config, TrainConfig):
        base = train_config.model_dump()
    else:
        base = dict(train_config or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**base)
    except ValidationError as e:
        raise ConfigError(_describe_validation(e, "training config")) from e


def _describe_validation(e: ValidationError, what: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {what}: " + "; ".join(parts)


def _task(task: str | Task, seed: int) -> Task:
    return task if isinstance(task, Task) else load_task(task, seed=seed)


def _base_of_adapter(adapter: str | Path) -> str:
    """The base model an adapter was trained on, from its manifest or adapter config."""
    try:
        return read_manifest(adapter)["config"]["model"]
    except (ArtifactError, KeyError):
        from .adapters.peft_io import read_adapter_config

        base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise ArtifactError(f"adapter {adapter} does not say which base model it belongs to; pass --model")
        return base


def evaluate(model: str | Path = DEFAULT_MODEL, *, task: str | Task | None = DEFAULT_TASK,
             adapter: str | Path | None = None, split: str = "test", limit: int | None = None,
             perplexity_text: str | None = None, seq_len: int = 512, max_windows: int | None = None,
             batch_size: int = 8, seed: int = 0, out: str | Path | None = None,
             progress: bool = True) -> dict:
    """Accuracy on a task split and/or perplexity on a text; optionally writes the JSON to `out`."""
    from .evaluate import evaluate_model

    if task is None and perplexity_text is None:
        raise ConfigError("nothing to evaluate: give a task, a perplexity text, or both")
    task_obj = _task(task, seed) if task is not None else None
    text = load_text(perplexity_text) if perplexity_text is not None else None
    net, tokenizer = load_model(model)
    if adapter is not None:
        load_adapter(net, adapter)
    result = evaluate_model(net, tokenizer, task=task_obj, split=split, limit=limit, text=text,
                            seq_len=seq_len, max_windows=max_windows, batch_size=batch_size,
                            progress=progress)
    result = {"model": str(model), "adapter": str(adapter) if adapter else None, **result}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    return result


def finetune(model: str | Path = DEFAULT_MODEL, *, task: str | Task = DEFAULT_TASK, out: str | Path,
             targets: Sequence[str] | None = None, rank: int = 16, alpha: float = 32.0,
             dropout: float = 0.05, train_config: TrainConfig | dict | None = None,
             overwrite: bool = False, progress: bool = True, **train_overrides: Any) -> Path:
    """Train a LoRA adapter on the task's training split; write it as a PEFT adapter to `out`.

    An interrupted run resumes from its last checkpoint (kept beside `out` until it finishes).
    """
    started = time.time()
    out = check_output_dir(out, overwrite)
    config = _train_config(train_config, **train_overrides)
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ConfigError(f"need rank >= 1, alpha > 0 and 0 <= dropout < 1; got rank={rank}, alpha={alpha}, dropout={dropout}")
    task_obj = _task(task, config.seed)
    net, tokenizer = load_model(model)
    names = target_modules(net, list(targets) if targets else None)
    add_lora(net, names, r=rank, alpha=alpha, dropout=dropout, seed=config.seed)
    checkpoints = out.parent / f".{out.name}.checkpoints"
    metrics = train(net, tokenizer, task_obj.train, config, checkpoints,
                    add_eos=task_obj.kind == "generation", progress=progress)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    with atomic_dir(out, overwrite) as tmp:
        save_adapter(net, tmp, base_model_name_or_path=str(model))
        write_manifest(
            tmp, stage="finetune", method="lora",
            config={"model": str(model), "task": task_obj.name, "targets": names, "rank": rank,
                    "alpha": alpha, "dropout": dropout, "train": config.model_dump()},
            inputs={"model": model} if Path(str(model)).exists() else None,
            metrics={**metrics, "adapter_parameters": trainable, "adapted_modules": len(lora_layers(net))},
            started=started, seed=config.seed,
        )
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out


def sparsify(model: str | Path = DEFAULT_MODEL, *, out: str | Path, method: str = "wanda",
             sparsity: float | None = None, pattern: str = "unstructured", calibration: dict | None = None,
             skip: Sequence[str] | None = None, options: dict | None = None, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Prune a model's linear layers (magnitude, Wanda, SparseGPT; unstructured or N:M) and save it
    as an HF directory with explicit zeros; the manifest records per-matrix sparsity."""
    from .sparsity import DEFAULT_SKIP, SPARSIFIERS, sparsify_model
    from .sparsity.masks import check_sparsity, parse_pattern

    started = time.time()
    out = check_output_dir(out, overwrite)
    if method not in SPARSIFIERS:  # the cheap checks come before loading the model
        raise ConfigError(f"unknown sparsity method {method!r}; known methods: {', '.join(sorted(SPARSIFIERS))}")
    parse_pattern(pattern)
    if sparsity is not None:
        check_sparsity(sparsity)
    net, tokenizer = load_model(model)
    report = sparsify_model(net, tokenizer, method, sparsity, pattern, calibration,
                            DEFAULT_SKIP if skip is None else skip, options, progress=progress)
    total = report.pop("total")
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, stage="sparsify", method=method,
                       config={"model": str(model), "method": method, "sparsity": total["target_sparsity"],
                               "pattern": total["pattern"], "options": total["options"],
                               "calibration": total["calibration"], "skip": list(DEFAULT_SKIP if skip is None else skip)},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"sparsity": total["sparsity"], "model_sparsity": total["model_sparsity"],
                                "zeros": total["zeros"], "params": total["params"], "left_dense": total["left_dense"],
                                "prune_time_s": total["wall_time_s"], "layers": report},
                       started=started, seed=(total["calibration"] or {}).get("seed"))
    return out


def quantize(model: str | Path = DEFAULT_MODEL, *, out: str | Path, method: str = "gptq", bits: int = 4,
             group_size: int = 64, symmetric: bool = True, act_order: bool = False, damp: float = 0.01,
             calibration: dict | None = None, skip: Sequence[str] | None = None, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Quantize a (dense or sparse) model's decoder linears with RTN or GPTQ, keeping its zeros, and
    save it as a compressed-tensors pack-quantized HF directory (transformers loads it; so does
    load_model, with exact QuantParams for the later stages)."""
    from .quant import DEFAULT_SKIP, QUANTIZERS, check_bits, quantize_model
    from .quant.formats import write_quantized

    started = time.time()
    out = check_output_dir(out, overwrite)
    if method not in QUANTIZERS:  # the cheap checks come before loading the model
        raise ConfigError(f"unknown quantization method {method!r}; known methods: {', '.join(sorted(QUANTIZERS))}")
    check_bits(bits)
    skip = DEFAULT_SKIP if skip is None else tuple(skip)
    net, tokenizer = load_model(model)
    report = quantize_model(net, tokenizer, method, bits, group_size, symmetric, act_order, damp, calibration,
                            skip, progress=progress)
    total = report.pop("total")
    config = {k: total[k] for k in ("method", "bits", "group_size", "symmetric", "act_order", "damp", "calibration")
              if k in total}
    with atomic_dir(out, overwrite) as tmp:
        write_quantized(net, tmp, tokenizer)
        write_manifest(tmp, stage="quantize", method=method, config={"model": str(model), **config, "skip": list(skip)},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"quantized_layers": total["layers"], "weights": total["weights"],
                                "zeros": total["zeros"], "zeros_after": total["zeros_after"],
                                "sparsity": total["zeros_after"] / total["weights"],
                                "bytes_per_weight": total["bytes_per_weight"],
                                "left_float": total["left_float"], "quantize_time_s": total["wall_time_s"],
                                "layers": report},
                       started=started, seed=(total.get("calibration") or {}).get("seed"))
    return out


def inspect(path: str | Path) -> dict:
    """Per-matrix sparsity (models) or per-module ranks (adapters) of an artifact directory."""
    from .summary import summarize

    return summarize(path)


def merge(adapter: str | Path, *, out: str | Path, model: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Fold an adapter into its base model and save the result as a plain HF model directory."""
    started = time.time()
    out = check_output_dir(out, overwrite)
    model = model or _base_of_adapter(adapter)
    net, tokenizer = load_model(model)
    load_adapter(net, adapter)
    merge_lora(net)
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, stage="merge", method="lora", config={"model": str(model), "adapter": str(adapter)},
                       inputs={"adapter": adapter}, started=started)
    return out
