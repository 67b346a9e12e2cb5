"""The export stage: a model artifact -> a GGUF file for llama.cpp, or a compressed-tensors directory
(smaller embeddings) for transformers / vLLM. api-level function; `slimtune export` calls it."""

from __future__ import annotations

import time
from pathlib import Path

from .. import lineage
from ..artifacts import atomic_dir, check_output_dir, write_manifest
from ..errors import ConfigError
from ..models import load_model

FORMATS = ("gguf", "compressed-tensors")
GGUF_FILE = "model.gguf"


def export(model: str | Path, *, out: str | Path, format: str = "gguf", float_type: str = "f16",
           embed_type: str = "q8_0", requantize: str | None = None, tokenizer_pre: str | None = None,
           embeddings: str | None = None, overwrite: bool = False) -> Path:
    """Export a model artifact (packed INT4, merged, or float) into the artifact directory `out`.

    gguf: `out/model.gguf` (deploy.gguf_export: the INT4 grid carried over as Q4_0 / Q4_1, floats in
    float_type, the embedding in embed_type; requantize only when asked). compressed-tensors: a
    packed model written again with its embedding / LM head in `embeddings` ("float16" or "bfloat16")."""
    started = time.time()
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if format == "compressed-tensors" and embeddings is None:
        raise ConfigError("a compressed-tensors export re-writes a packed model; pass embeddings='float16' or "
                          "'bfloat16' (the quantize stage already writes the float32 form)")
    out = check_output_dir(out, overwrite)
    net, tokenizer = load_model(model)
    config = {"model": str(model), "format": format}
    with atomic_dir(out, overwrite) as tmp:
        if format == "gguf":
            from .gguf_export import export_gguf

            metrics = export_gguf(net, tokenizer, tmp / GGUF_FILE, float_type=float_type, embed_type=embed_type,
                                  requantize=requantize, tokenizer_pre=tokenizer_pre, name=Path(str(model)).name)
            metrics["file"] = GGUF_FILE
            config.update(float_type=float_type, embed_type=embed_type, requantize=requantize,
                          tokenizer_pre=metrics["tokenizer"]["pre"])
        else:
            from ..quant.formats import write_quantized

            write_quantized(net, tmp, tokenizer, embeddings=embeddings)
            metrics = {"bytes": sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())}
            config.update(embeddings=embeddings)
        write_manifest(tmp, stage="export", method=format, config=config,
                       inputs={"model": model} if Path(str(model)).exists() else None, metrics=metrics,
                       started=started, lineage=lineage.of(model))
    return out
