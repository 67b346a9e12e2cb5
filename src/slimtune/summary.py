"""`slimtune inspect`: what an artifact holds.

`summarize` reads the files without building the model. Model directories: per-matrix shape and
sparsity of every 2-D weight (embeddings and head included, marked), and the total over the prunable
matrices. Adapter directories: per-module ranks. Either way the manifest's stage, method and metrics
come along when present. `model_costs` builds the model: parameters, MACs per token and per-block
widths (nas/cost.py), and on request measured CPU latency (deploy/speed.py).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from .adapters.peft_io import ELASTIC_CONFIG, peft_compatible
from .artifacts import Artifact, check_safetensors
from .errors import ArtifactError
from .models import is_packed_quantized

_DENSE_BY_DEFAULT = ("embed", "lm_head", "wte", "wpe", "word_embeddings", "position_embeddings")


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ArtifactError(f"{directory} holds no .safetensors weights")
    for f in files:
        check_safetensors(f)  # a truncated file is named, not a SafetensorError traceback
    return files


def summarize(path: str | Path) -> dict:
    directory = Path(path)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass an artifact directory")
    damaged = None
    try:
        artifact = Artifact.find(directory)
    except ArtifactError as e:  # the files can still be described; the damage is reported with them
        artifact, damaged = None, str(e)
    summary: dict = {"path": str(directory), "stage": artifact and artifact.stage,
                     "method": artifact and artifact.method,
                     **({"manifest_error": damaged} if damaged else {})}
    if (directory / "adapter_config.json").is_file():
        summary["kind"] = "adapter"
        ranks = {}
        for f in _weight_files(directory):
            with safe_open(str(f), "pt") as st:
                for key in st.keys():
                    if key.endswith("lora_A.weight"):
                        ranks[key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")] = st.get_slice(key).get_shape()[0]
        summary["ranks"] = ranks
        try:
            summary["peft_compatible"] = peft_compatible(directory)
        except ArtifactError:  # not a LoRA at all (another PEFT method)
            summary["peft_compatible"] = None
        if (directory / ELASTIC_CONFIG).is_file():
            from .nas import SearchSpace

            space = SearchSpace.load(directory)
            summary["elastic"] = {"preset": space.preset, "groups": {g: d.choices for g, d in space.dimensions.items()}}
        return summary
    if not (directory / "config.json").is_file():
        raise ArtifactError(f"{directory} is neither a model directory (config.json) nor an adapter (adapter_config.json)")
    summary["kind"] = "model"
    matrices, zeros, params = {}, 0, 0
    packed: set[str] = set()
    if is_packed_quantized(directory):
        from .quant.compact import is_compact, read_compact_embeddings, read_compact_layers
        from .quant.formats import read_packed_layers

        compact = is_compact(directory)
        for name, qp, codes in (read_compact_layers if compact else read_packed_layers)(directory):
            z = int((qp.dequantize(codes) == 0).sum())
            matrices[f"{name}.weight"] = {"shape": list(codes.shape), "sparsity": z / codes.numel(), "prunable": True,
                                          "bits": qp.bits, "group_size": qp.group_size, "symmetric": qp.symmetric}
            zeros, params = zeros + z, params + codes.numel()
            packed.add(name)
        for key, grid, qp, codes in read_compact_embeddings(directory) if compact else ():
            matrices[key] = {"shape": grid["shape"], "sparsity": float((qp.dequantize(codes) == 0).float().mean()),
                             "prunable": False,
                             **{k: grid[k] for k in ("bits", "group_size", "symmetric")}}
    for f in _weight_files(directory):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                if not key.endswith("weight") or key.rpartition(".")[0] in packed:
                    continue
                tensor = st.get_tensor(key)
                if tensor.dim() != 2:
                    continue
                z = int((tensor == 0).sum())
                dense_by_default = any(k in key for k in _DENSE_BY_DEFAULT)
                matrices[key] = {"shape": list(tensor.shape), "sparsity": z / tensor.numel(),
                                 "prunable": not dense_by_default}
                if not dense_by_default:
                    zeros, params = zeros + z, params + tensor.numel()
    summary["matrices"] = matrices
    summary["total"] = {"sparsity": zeros / params if params else 0.0, "zeros": zeros, "params": params}
    if artifact:
        summary["metrics"] = {k: v for k, v in artifact.metrics.items() if k != "layers"}
    return summary


def model_costs(path: str | Path, cfg) -> dict:
    """{"costs": ..., "latency": ...} of the model in `path` (cfg: configs.InspectConfig); a model that
    cannot be built is reported as "costs_error" rather than failing the description of its files."""
    from .errors import ModelLoadError
    from .models import load_model
    from .nas.cost import model_costs as costs_of

    try:
        net, _ = load_model(path)
    except (ModelLoadError, ArtifactError) as e:
        return {"costs_error": str(e)}
    net.eval()
    out = {"costs": costs_of(net, cfg.seq_len)} if cfg.costs else {}
    if cfg.latency:
        from .deploy.speed import measure_latency

        out["latency"] = measure_latency(net, prefill_tokens=cfg.prefill_tokens, decode_tokens=cfg.decode_tokens,
                                         repeats=cfg.repeats, threads=cfg.threads)
    return out


def _format_costs(summary: dict) -> list[str]:
    lines = []
    if summary.get("costs_error"):
        lines.append(f"  WARNING: the model could not be built for its costs: {summary['costs_error']}")
    c = summary.get("costs")
    if c:
        lines.append(f"  parameters {c['parameters']:,} (block linear layers {c['block_linear_parameters']:,}, "
                     f"embeddings {c['embedding_parameters']:,})")
        attention = "" if c["attention_macs_per_token"] is None else \
            f" + attention {c['attention_macs_per_token']:,} at {c['seq_len']} positions"
        lines.append(f"  MACs per token {c['macs_per_token']:,} (linear {c['linear_macs_per_token']:,}{attention})")
        if c.get("widths"):
            lines.append("  widths " + ", ".join(f"{k} {v}" for k, v in c["widths"].items()) + " in every block")
        for i, w in enumerate(c.get("block_widths") or []):
            lines.append(f"  block {i:3d} " + ", ".join(f"{k} {v}" for k, v in w.items()))
    t = summary.get("latency")
    if t:
        decode = (f"; decode {t['decode_tokens_per_s']:.1f} tokens/s ({t['decode_ms_per_token']:.1f} ms/token, "
                  f"{t['decode_tokens']} tokens)") if "decode_tokens_per_s" in t else ""
        lines.append(f"  CPU latency (batch 1, {t['threads']} threads, median of {t['repeats']}): prefill of "
                     f"{t['prefill_tokens']} tokens {t['prefill_ms']:.1f} ms{decode}")
    return lines


def format_summary(summary: dict) -> str:
    lines = [f"{summary['path']}: {summary['kind']}"
             + (f" from stage {summary['stage']} ({summary['method']})" if summary.get("stage") else "")]
    if summary.get("manifest_error"):
        lines.append(f"  WARNING: {summary['manifest_error']}")
    if summary["kind"] == "adapter":
        lines += [f"  {name:60s} rank {r}" for name, r in summary["ranks"].items()]
        if summary.get("peft_compatible") is not None:
            lines.append("  a plain LoRA: peft.PeftModel.from_pretrained loads it with the same outputs"
                         if summary["peft_compatible"] else
                         "  sparse / quantization-aware: peft.PeftModel cannot apply it; use `slimtune merge` "
                         "or slimtune.api.load_adapted")
        if "elastic" in summary:
            spaces = {tuple(v) for v in summary["elastic"]["groups"].values()}
            lines.append(f"  elastic super-adapter: {len(summary['elastic']['groups'])} rank groups "
                         f"({summary['elastic']['preset']}), rank spaces {sorted(spaces, reverse=True)}")
        return "\n".join(lines)
    lines.append(f"  {'matrix':60s} {'shape':>14s} {'sparsity':>9s}")
    for name, m in summary["matrices"].items():
        note = "" if m["prunable"] else "  (embedding/head)"
        if "bits" in m:
            note += f"  INT{m['bits']} g{m['group_size']} {'sym' if m['symmetric'] else 'asym'}"
        lines.append(f"  {name:60s} {'x'.join(map(str, m['shape'])):>14s} {m['sparsity']:9.2%}{note}")
    t = summary["total"]
    lines.append(f"  total over {t['params']:,} prunable weights: {t['sparsity']:.2%} zero")
    return "\n".join(lines + _format_costs(summary))
