"""Stages beyond api.py (kept out of it for its length), with api.py's contract: validate before work,
write one artifact atomically with a manifest that carries lineage. api.py re-exports them.

- `refactor`: SVD re-factorization of a trained adapter, truncated to a rank or a parameter budget
  (adapters/svd.py), written as a standard PEFT LoRA (rank_pattern) in the adapter's own mode.
- `diagnose_intruders`: intruder dimensions of an adapter or a merged model against its base (diagnose/).
- `generate`: a greedy continuation of a prompt on the fast inference path (deploy/decode.py); no artifact.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import lineage
from .adapters.peft_io import adapter_mode, base_of_adapter, mode_record, write_lora
from .adapters.svd import check_ranks, read_factors, refactor_factors
from .artifacts import Artifact, atomic_dir, check_output_dir, write_manifest
from .diagnose import diagnose_intruders
from .errors import ArtifactError, ConfigError

__all__ = ["refactor", "diagnose_intruders", "generate"]


def refactor(adapter: str | Path, *, out: str | Path, rank: int | dict | None = None, budget: int | None = None,
             model: str | Path | None = None, overwrite: bool = False) -> Path:
    """Re-factor an adapter's updates as U·Σ·Vᵀ (components by singular value) and truncate them: `rank`
    uniform (capped at each module's rank) or {module: rank}, or per-module ranks allocated to a `budget`
    of adapter parameters (greedy by energy per parameter). An elastic super-adapter is taken at its
    maximal rank. The result is a fixed-rank PEFT LoRA (rank_pattern, alpha_pattern) that `merge` merges
    and, for a plain LoRA, peft.PeftModel loads; sparse and quantization-aware adapters keep their mode
    (the truncated update is still masked / put on the grid at merge). Lineage is inherited."""
    started = time.time()
    out = check_output_dir(out, overwrite)
    check_ranks(rank, budget)  # the cheap checks before reading the adapter (RefactorConfig's, with per-module ranks)
    config, factors = read_factors(adapter)
    check_ranks(rank, budget, factors)
    mode = adapter_mode(adapter)
    source = Artifact.find(adapter)
    recorded = source.config if source else {}
    if model is None:
        try:
            model = base_of_adapter(adapter)
        except ArtifactError:
            model = None
    new, alphas, report = refactor_factors(factors, rank, budget)
    params = sum(r["parameters"] for r in report.values())
    source_params = sum(a.numel() + b.numel() for a, b, _ in factors.values())
    error2 = sum(r["frobenius_error"] ** 2 for r in report.values())
    label = f"svd:rank={rank}" if isinstance(rank, int) else f"svd:budget={budget}" if budget else "svd:ranks"
    with atomic_dir(out, overwrite) as tmp:
        write_lora(tmp, new, alphas, target_modules=config.get("target_modules") or sorted(new),
                   task_type=config.get("task_type") or "CAUSAL_LM", dropout=config.get("lora_dropout", 0.0),
                   base_model_name_or_path=str(model) if model is not None else None,
                   mode=mode_record(mode["sparse"], mode["quant_aware"], mode["qa_weights"]))
        write_manifest(tmp, stage="refactor", method=label,
                       config={"model": str(model) if model is not None else None, "adapter": str(adapter),
                               "rank": rank, "budget": budget, "ranks": {n: r["rank"] for n, r in report.items()},
                               "sparse": bool(mode["sparse"]), "quant_aware": bool(mode["quant_aware"]),
                               "qa_weights": mode["qa_weights"] if mode["quant_aware"] else None,
                               "float_base": mode["float_base"], "task": recorded.get("task")},
                       inputs={"adapter": adapter},
                       metrics={"adapter_parameters": params, "source_parameters": source_params,
                                "frobenius_error": error2 ** 0.5,
                                "modules": {n: {k: v for k, v in r.items() if k != "sigma"} for n, r in report.items()},
                                "sigma": {n: r["sigma"] for n, r in report.items()}},
                       started=started, lineage=lineage.of(adapter))
    return out


def generate(model: str | Path, prompt: str, *, config=None, **options) -> dict:
    """Greedy continuation of `prompt` (batch 1) by a model, through deploy.decode.StaticDecoder on the
    inference path `int4` / `embeddings` choose (as load_model's; `int4` defaults to the kernel here). The
    prompt is tokenized after the model's prefix token (BOS, else EOS), as evaluation scores text. Options:
    configs.GenerateConfig. Returns {"text", "new_tokens", "prefill_s", "decode_tokens_per_s", "compile_s", ...};
    the timings are this machine's at this moment, and the compile time is measured apart."""
    import torch

    from .configs import GenerateConfig
    from .data.text import prefix_token_id
    from .deploy.decode import StaticDecoder, cpp_compiler
    from .models import load_model

    cfg = GenerateConfig.build(config, options)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty: give the text to continue (--prompt)")
    if cfg.compile and cpp_compiler() is None:
        raise ConfigError("--compile needs a C++ compiler (torch.compile builds its CPU kernels with g++ or clang++): "
                          "install one, or generate without --compile")
    net, tokenizer = load_model(model, int4=cfg.int4, embeddings=cfg.embeddings)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    prefix = prefix_token_id(tokenizer)
    if prefix is not None and ids[:1] != [prefix]:
        ids = [prefix] + ids
    length = len(ids) + cfg.max_new_tokens
    limit = getattr(net.config, "max_position_embeddings", None)
    if limit and length > limit:
        raise ConfigError(f"{len(ids)} prompt tokens + {cfg.max_new_tokens} new ones exceed the model's "
                          f"{limit} positions: shorten the prompt or lower max_new_tokens")
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or previous)
    try:
        decoder = StaticDecoder(net, max_length=length, compile=cfg.compile)
        prompt_ids = torch.tensor([ids])
        t0 = time.perf_counter()
        if cfg.compile:  # compiled on its first step: timed apart
            decoder.step(decoder.prefill(prompt_ids), len(ids))
        t1 = time.perf_counter()
        new = [int(decoder.prefill(prompt_ids))]
        t2 = time.perf_counter()
        while len(new) < cfg.max_new_tokens and new[-1] != tokenizer.eos_token_id:
            new.append(int(decoder.step(torch.tensor([[new[-1]]]), len(ids) + len(new) - 1)))
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    steps = len(new) - 1
    return {"model": str(model), "prompt": prompt, "text": tokenizer.decode(new, skip_special_tokens=True),
            "tokens": new, "new_tokens": len(new), "prefill_s": round(t2 - t1, 4),
            "decode_tokens_per_s": round(steps / (t3 - t2), 2) if steps else None,
            "compile_s": round(t1 - t0, 1) if cfg.compile else None, "int4": cfg.int4, "embeddings": cfg.embeddings,
            "compiled": cfg.compile}
