"""INT4 inference on smollm2-135m: resident memory and tokens/s of dense fp32, the INT4 kernel path
and the dequantized-cache path, in one run (each variant in its own process), printed as ratios.

    python bench/int4.py [--model smollm2-135m] [--group-size 64] [--prefill 256] [--decode 64]
                         [--rounds 3] [--embeddings float16]

Variants: dense fp32; INT4 kernel (only the kernel's packed copy of each weight); INT4 kernel with
the embedding / LM head held in `--embeddings` (load_model(embeddings=...)); INT4 dequantized cache.

The packed model is slimtune's RTN INT4 of the same model (asymmetric, the given group size),
written once to a temporary directory; memory = the process's resident set after loading and one
forward, minus its resident set before loading (torch and transformers already imported); prefill
and decode tokens/s are medians over --rounds timings (decode: greedy, batch 1, after a 128-token prompt).
Also: logit agreement of the kernel with the dequantized path on the prefill text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(args) -> dict:
    import torch

    import transformers  # noqa: F401 (imported before the baseline is taken)
    from _common import rss_mb
    from slimtune.data.text import load_text
    from slimtune.models import load_model

    torch.set_num_threads(args.threads)
    before = rss_mb()
    spec = args.model if args.variant == "dense" else args.packed
    model, tok = load_model(spec, int4="kernel" if args.variant.startswith("kernel") else "dequantize",
                            embeddings=args.embeddings if args.variant == "kernel-half" else None)
    ids = tok(load_text("wiki")[:20000], return_tensors="pt").input_ids[:, :args.prefill]
    with torch.no_grad():
        logits = model(ids).logits  # warm-up (builds the caches)
        mem = rss_mb() - before
        prefill = ids.shape[1] / statistics.median(_seconds(lambda: model(ids)) for _ in range(args.rounds))
        prompt = ids[:, :128]
        model.generate(prompt, max_new_tokens=2, do_sample=False)
        # the median of rounds: one timed generate swings by 2x when the VM's neighbours are busy
        decode = args.decode / statistics.median(
            _seconds(lambda: model.generate(prompt, max_new_tokens=args.decode, min_new_tokens=args.decode,
                                            do_sample=False)) for _ in range(args.rounds))
    torch.save({"logits": logits[0].clone(), "ids": ids[0].clone()}, Path(args.out) / f"{args.variant}.pt")
    return {"variant": args.variant, "memory_mb": round(mem, 1), "rss_mb": round(rss_mb(), 1),
            "prefill_tok_s": round(prefill, 1), "decode_tok_s": round(decode, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embeddings", default="float16", choices=("float16", "bfloat16"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--packed", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    import torch

    from slimtune.models import load_model
    from slimtune.quant import quantize_model, save_quantized

    tmp = tempfile.TemporaryDirectory()
    packed = Path(tmp.name) / "packed"
    model, tok = load_model(args.model)
    quantize_model(model, tok, "rtn", bits=4, group_size=args.group_size, symmetric=False, progress=False)
    save_quantized(model, packed, tok)
    del model
    rows = []
    for variant in ("dense", "kernel", "kernel-half", "dequantize"):
        cmd = [sys.executable, __file__, "--variant", variant, "--packed", str(packed), "--out", tmp.name,
               *sum(([f"--{k.replace('_', '-')}", str(getattr(args, k))] for k in
                     ("model", "prefill", "decode", "rounds", "threads", "embeddings")), [])]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    dense = rows[0]
    print(f"model {args.model}, INT4 RTN asymmetric group {args.group_size}, {args.threads} threads, "
          f"prefill 1 x {args.prefill}, decode {args.decode} tokens after 128; kernel-half: {args.embeddings} "
          "embedding / LM head")
    print("| path | memory MB | vs dense | prefill tok/s | vs dense | decode tok/s | vs dense |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['memory_mb']:.0f} | {r['memory_mb'] / dense['memory_mb']:.2f} | "
              f"{r['prefill_tok_s']:.0f} | {r['prefill_tok_s'] / dense['prefill_tok_s']:.2f} | "
              f"{r['decode_tok_s']:.1f} | {r['decode_tok_s'] / dense['decode_tok_s']:.2f} |")
    d = torch.load(Path(tmp.name) / "dequantize.pt")
    ids = d["ids"][1:, None]
    ld = d["logits"][:-1].log_softmax(-1)
    td = ld.gather(-1, ids)
    for variant in ("kernel", "kernel-half"):
        lk = torch.load(Path(tmp.name) / f"{variant}.pt")["logits"][:-1].log_softmax(-1)
        tk = lk.gather(-1, ids)
        print(f"{variant} vs dequantized over {ids.shape[0]} next tokens: mean NLL {-tk.mean():.4f} vs "
              f"{-td.mean():.4f}, max |d logprob of the next token| {(tk - td).abs().max():.4f}, max |d logprob| "
              f"over the vocabulary {(lk - ld).abs().max():.4f}, argmax agreement "
              f"{(lk.argmax(-1) == ld.argmax(-1)).float().mean():.3f}")


if __name__ == "__main__":
    main()
