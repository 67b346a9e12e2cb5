"""slimtune's GGUF export run by llama.cpp itself: next-token log-probabilities against slimtune's.

    python bench/gguf_llamacpp.py --llama-python /tmp/llamacpp/venv/bin/python [--model smollm2-135m]

llama.cpp is not a slimtune dependency: `--llama-python` is the interpreter of a separate
environment with `llama-cpp-python` built from its source distribution (bench/RESULTS.md says how).
For each grid, INT4 RTN symmetric group 32 (-> Q4_0) and asymmetric group 32 (-> Q4_1), the model is
quantized (`slimtune quantize`), exported (`slimtune export --format gguf`, embedding f32 and the
default q8_0), and the same token ids (after the prefix token) are scored by llama.cpp
(logits_all=True) and by slimtune's exact dequantized path. A reference row runs the dense model
exported all-f32 (`--float-type f32 --embed-type f32`): what llama.cpp's own arithmetic (f16 KV
cache, its kernels) differs by before any quantization. Reported per file: max / mean |difference|
of the log-probability of each actual next token, the max over the whole vocabulary, and top-1
agreement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "Once upon a time, in a small village at the edge of the forest, there lived",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes it boils at",
]
GRIDS = {"dense": None, "q4_0": ["--sym"], "q4_1": ["--asym"]}

LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, ids_file, out = sys.argv[1:4]
prompts = json.load(open(ids_file))
llm = Llama(model_path=path, logits_all=True, n_ctx=512, n_threads=2, n_batch=512, verbose=False)
res = []
for ids in prompts:
    llm.reset()
    llm.eval(ids)
    s = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
    m = s.max(-1, keepdims=True)
    res.append((s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))).tolist())
json.dump(res, open(out, "w"))
"""


def slimtune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "slimtune.cli", *args], check=True, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True, help="python of the environment with llama-cpp-python")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--embed-types", default="f32,q8_0")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    args = ap.parse_args()
    import torch

    from slimtune.data.text import prefix_token_id
    from slimtune.models import load_model

    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-llamacpp-"))
    rows = []
    for grid, flags in GRIDS.items():
        packed = work / f"packed-{grid}" if flags is not None else args.model
        if flags is not None and not Path(packed).exists():
            slimtune("quantize", "--model", args.model, "--method", "rtn", "--bits", "4", "--group-size", "32",
                     *flags, "--out", str(packed))
        net, tok = load_model(packed)  # exact dequantized path
        prompts = [[prefix_token_id(tok)] + tok(p).input_ids for p in PROMPTS]
        (work / "ids.json").write_text(json.dumps(prompts))
        with torch.no_grad():
            ours = [net(torch.tensor([ids])).logits[0].double().log_softmax(-1) for ids in prompts]
        del net
        for embed in args.embed_types.split(",") if flags is not None else ["f32"]:
            out = work / f"gguf-{grid}-{embed}"
            if not out.exists():
                slimtune("export", "--model", str(packed), "--format", "gguf", "--embed-type", embed, "--out", str(out),
                         *(["--float-type", "f32"] if flags is None else []))
            scores = work / f"llama-{grid}-{embed}.json"
            subprocess.run([args.llama_python, "-c", LLAMA_SCRIPT, str(out / "model.gguf"), str(work / "ids.json"),
                            str(scores)], check=True)
            theirs = [torch.tensor(s, dtype=torch.float64) for s in json.loads(scores.read_text())]
            nxt, full, agree, n = [], 0.0, 0, 0
            for ids, a, b in zip(prompts, ours, theirs):
                target = torch.tensor(ids[1:])[:, None]
                nxt.append((a[:-1].gather(-1, target) - b[:-1].gather(-1, target)).abs().flatten())
                full = max(full, float((a - b).abs().max()))
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                n += a.shape[0]
            d = torch.cat(nxt)
            rows.append({"file": f"{grid} + {embed} embedding", "bytes": (out / "model.gguf").stat().st_size,
                         "max": float(d.max()), "mean": float(d.mean()), "vocab_max": full, "top1": agree / n,
                         "positions": n})
    print(f"model {args.model}, INT4 RTN group 32, {len(PROMPTS)} prompts, {rows[0]['positions']} positions; "
          "|slimtune (dequantized path) - llama.cpp| log-probabilities in nats")
    print("| GGUF | bytes | next token max | next token mean | vocabulary max | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['file']} | {r['bytes']:,} | {r['max']:.4f} | {r['mean']:.4f} | {r['vocab_max']:.4f} | "
              f"{r['top1']:.3f} |")


if __name__ == "__main__":
    main()
