"""slimtune's GGUF export run by llama.cpp itself: next-token log-probabilities against slimtune's.

    python bench/gguf_llamacpp.py --llama-python /tmp/llamacpp/venv/bin/python [--model smollm2-135m]

llama.cpp is not a slimtune dependency: `--llama-python` is the interpreter of a separate
environment with `llama-cpp-python` built from its source distribution (bench/RESULTS.md says how).
For each grid, INT4 RTN symmetric group 32 (-> Q4_0), asymmetric group 32 (-> Q4_1) and INT8 symmetric
group 32 (-> Q8_0), the model is quantized (`slimtune quantize`), exported (`slimtune export --format
gguf`, embedding f32 and the default q8_0), and the same token ids (after the prefix token) are scored by llama.cpp
(logits_all=True) and by slimtune's exact dequantized path. A reference row runs the dense model
exported all-f32 (`--float-type f32 --embed-type f32`): what llama.cpp's own arithmetic (f16 KV
cache, its kernels) differs by before any quantization. Reported per file: max / mean |difference|
of the log-probability of each actual next token, the max over the whole vocabulary, and top-1
agreement.

--emulate adds, per quantized file, the file's own weights (read back to float32 by transformers' GGUF
loader) scored in torch with ggml's CPU arithmetic emulated: the input of every matmul with quantized
weights (the decoder blocks' linear layers, and the LM head with a q8_0 embedding) rounded as ggml's
quantize_row_q8_0 rounds it (blocks of 32, scale max|x| / 127 stored in float16, codes rounded to
nearest), and once more without that rounding. If llama.cpp agrees with the emulated row and not with
the plain one, its 8-bit activations are the whole difference. A last row runs the same emulation in
float32 and in float64: how far two implementations of the very same arithmetic land apart once 8-bit
rounding of activations amplifies float rounding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import LLAMA_PLAIN_BUFFERS

PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "Once upon a time, in a small village at the edge of the forest, there lived",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes it boils at",
]
GRIDS = {"dense": None, "q4_0": ["--bits", "4", "--sym"], "q4_1": ["--bits", "4", "--asym"],
         "q8_0": ["--bits", "8", "--sym"]}

LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, ids_file, out, plain_buffers = sys.argv[1:5]
exec(plain_buffers)
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


def q8_activations(net, head: bool = False):
    """Round the input of every linear layer in the decoder blocks as ggml's CPU dot products do for Q4 and
    Q8 weights (their vec_dot types Q8_0 / Q8_1: blocks of 32, d = max|x| / 127 in float16, q = round(x / d));
    head: the LM head's input too (a quantized output / tied embedding). Returns the hook handles (remove them
    to switch back). Written here: no library emulates ggml's kernels."""
    import torch

    def hook(_module, args):
        x = args[0]
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        d = blocks.abs().amax(-1, keepdim=True) / 127  # codes from the float32 scale, stored in float16
        q = torch.where(d > 0, torch.round(blocks / d.clamp_min(1e-30)), torch.zeros_like(blocks))
        return ((q * d.half().float()).reshape(x.shape),)

    linears = [m for m in net.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    return [m.register_forward_pre_hook(hook) for m in linears + ([net.lm_head] if head else [])]


def slimtune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "slimtune.cli", *args], check=True, capture_output=True, text=True)


def compare(prompts, ours, theirs) -> dict:
    """|difference| of two runs' log-probabilities: of each actual next token (max, mean), over the whole
    vocabulary (max), and top-1 agreement."""
    import torch

    nxt, full, agree, n = [], 0.0, 0, 0
    for ids, a, b in zip(prompts, ours, theirs):
        target = torch.tensor(ids[1:])[:, None]
        nxt.append((a[:-1].gather(-1, target) - b[:-1].gather(-1, target)).abs().flatten())
        full = max(full, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += a.shape[0]
    d = torch.cat(nxt)
    return {"max": float(d.max()), "mean": float(d.mean()), "vocab_max": full, "top1": agree / n, "positions": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True, help="python of the environment with llama-cpp-python")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--embed-types", default="f32,q8_0")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--emulate", action="store_true", help="also score each quantized file's own weights in torch, "
                    "with and without ggml's 8-bit activations emulated")
    args = ap.parse_args()
    import torch

    from slimtune.data.text import prefix_token_id
    from slimtune.models import load_model

    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for grid, flags in GRIDS.items():
        packed = work / f"packed-{grid}" if flags is not None else args.model
        if flags is not None and not Path(packed).exists():
            slimtune("quantize", "--model", args.model, "--method", "rtn", "--group-size", "32",
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
                            str(scores), LLAMA_PLAIN_BUFFERS], check=True)
            theirs = [torch.tensor(s, dtype=torch.float64) for s in json.loads(scores.read_text())]
            size = (out / "model.gguf").stat().st_size
            rows.append({"file": f"{grid} + {embed} embedding", "bytes": size, **compare(prompts, ours, theirs)})
            if args.emulate and flags is not None:
                file_net, _ = load_model(out / "model.gguf")
                runs = {}
                for label, emulate, dtype in (("its weights in float32", False, torch.float32),
                                              ("+ Q8 activations emulated", True, torch.float32),
                                              ("in float64", True, torch.float64)):
                    hooks = q8_activations(file_net.to(dtype), head=embed != "f32") if emulate else []
                    with torch.no_grad():
                        runs[label] = [file_net(torch.tensor([ids])).logits[0].double().log_softmax(-1)
                                       for ids in prompts]
                    for h in hooks:
                        h.remove()
                for label in list(runs)[:2]:
                    rows.append({"file": f"  llama.cpp vs {label}", "bytes": size,
                                 **compare(prompts, runs[label], theirs)})
                rows.append({"file": "  emulated, float32 vs float64 (no llama.cpp)", "bytes": size,
                             **compare(prompts, runs["+ Q8 activations emulated"], runs["in float64"])})
                del file_net
    print(f"model {args.model}, RTN group 32, {len(PROMPTS)} prompts, {rows[0]['positions']} positions; "
          "|slimtune (dequantized path) - llama.cpp| log-probabilities in nats")
    print("| GGUF | bytes | next token max | next token mean | vocabulary max | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['file']} | {r['bytes']:,} | {r['max']:.4f} | {r['mean']:.4f} | {r['vocab_max']:.4f} | "
              f"{r['top1']:.3f} |")


if __name__ == "__main__":
    main()
