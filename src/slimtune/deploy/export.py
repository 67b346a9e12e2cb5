"""The export stage: a model artifact -> a GGUF file for llama.cpp, or a compressed-tensors directory
(smaller embeddings) for transformers / vLLM. api-level function; `slimtune export` calls it."""

from __future__ import annotations

import time
from pathlib import Path

from .. import lineage
from ..artifacts import atomic_dir, check_output_dir, write_manifest
from ..configs import ExportConfig
from ..models import load_model

GGUF_FILE = "model.gguf"


def export(model: str | Path, *, out: str | Path, config: ExportConfig | dict | None = None, overwrite: bool = False,
           **options) -> Path:
    """Export a model artifact (packed INT4, merged, or float) into the artifact directory `out`.
    Options: configs.ExportConfig, as `config` or keywords.

    gguf: `out/model.gguf` (deploy.gguf_export: the INT4 grid carried over as Q4_0 / Q4_1, floats in
    float_type, the embedding in embed_type; requantize only when asked). compressed-tensors: a
    packed model written again with its embedding / LM head in `embeddings` ("float16" or "bfloat16").
    compact: quant/compact.py (the same codes and grids, non-zero codes behind a bitmask; the embedding
    in float16 / bfloat16 or quantized int8 / int4), loaded by slimtune only."""
    started = time.time()
    cfg = ExportConfig.build(config, options)
    format, float_type, embed_type, requantize = cfg.format, cfg.float_type, cfg.embed_type, cfg.requantize
    tokenizer_pre, embeddings = cfg.tokenizer_pre, cfg.embeddings
    out = check_output_dir(out, overwrite)
    net, tokenizer = load_model(model)
    config = {**cfg.record(), "model": str(model)}
    with atomic_dir(out, overwrite) as tmp:
        if format == "gguf":
            from .gguf_export import export_gguf

            metrics = export_gguf(net, tokenizer, tmp / GGUF_FILE, float_type=float_type, embed_type=embed_type,
                                  requantize=requantize, tokenizer_pre=tokenizer_pre, name=Path(str(model)).name)
            metrics["file"] = GGUF_FILE
            config.update(float_type=float_type, embed_type=embed_type, requantize=requantize,
                          tokenizer_pre=metrics["tokenizer"]["pre"])
        elif format == "compact":
            from ..quant.compact import write_compact

            metrics = {"bytes_by_part": write_compact(net, tmp, tokenizer, embeddings=embeddings)}
            config.update(embeddings=embeddings)
        else:
            from ..quant.formats import write_quantized

            write_quantized(net, tmp, tokenizer, embeddings=embeddings)
            metrics = {}
            config.update(embeddings=embeddings)
        if format != "gguf":
            metrics["bytes"] = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        write_manifest(tmp, stage="export", method=format, config=config,
                       inputs={"model": model} if Path(str(model)).exists() else None, metrics=metrics,
                       started=started, lineage=lineage.of(model))
    return out
