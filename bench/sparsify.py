"""Pruning quality and run time: slimtune's magnitude, Wanda and SparseGPT vs llm-compressor's Wanda and SparseGPT.

    python bench/sparsify.py                                # default model, 50% unstructured + 2:4, 16 x 512 news tokens
    python bench/sparsify.py --methods wanda --patterns 2:4 # a subset
    python bench/sparsify.py --sweep                        # + Wanda vs SparseGPT at 16/64/128 calibration sequences
    python bench/sparsify.py --skip-llmc                    # slimtune only
    python bench/sparsify.py --quick                        # seconds: tiny random Llama, slimtune only

Both sides prune the same model (fp32) with the same calibration token ids: slimtune's
`calibration_batches(tokenizer, "news", n, 512, seed=0)`. slimtune runs `sparsify_model` in a fresh
subprocess of this venv; llm-compressor 0.14 (which pins transformers <= 5.17 and torch <= 2.14) runs
`oneshot` with `WandaPruningModifier` / `SparseGPTModifier(sparsity=0.5, mask_structure="0:0"|"2:4",
targets=["Linear"], ignore=["re:.*lm_head"])` in a subprocess of its own virtual environment, created on
first use under ~/.cache/slimtune/bench-venvs/llmcompressor-0.14 (`python3 -m venv` + `pip install
torch==2.13.0 llmcompressor==0.14.*`; the pip configuration on this machine resolves torch to the local
CPU wheel). llm-compressor gets the token ids as a `datasets.Dataset` (input_ids, attention_mask),
unshuffled, with its default batch_size 1; SparseGPT uses dampening 0.01 and block size 128 on both sides.

Timed on both sides: only the pruning call (`sparsify_model(...)` / `oneshot(...)`), with the model
already loaded and before saving; wall clock and process CPU time (all threads), torch.set_num_threads
(--threads). Each side saves its pruned model as a plain HF directory (explicit zeros), and ONE evaluator
(slimtune's `perplexity`, fp32, seq_len 512, the first 8 non-overlapping windows of
`load_text("wiki")`) scores every saved directory and the dense model. Jobs run one at a time,
alternating sides, so drifts in machine load hit both alike.

Magnitude runs per row (scope="row", the issue's "per-row magnitude") for unstructured patterns; it
has no llm-compressor counterpart here (the issue's reference number is shown instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `python bench/sparsify.py` has it already; other ways in may not
    sys.path.insert(0, str(HERE))

from _common import _env, _fmt, add_common_args, setup_run, _last_json, _loadavg, evaluate, llmc_env, llmc_python, llmc_version  # noqa: E402

# The issue's reference points (llm-compressor 0.14, 16 x 512 news tokens, ppl over 8 x 512 wiki tokens).
REFERENCE = {("dense", "-"): 21.2, ("magnitude", "unstructured"): 344.0, ("wanda", "unstructured"): 72.7,
             ("sparsegpt", "unstructured"): 76.3, ("sparsegpt", "2:4"): 247.0}


# --------------------------------------------------------------------------- slimtune worker

def slimtune_worker(args) -> dict:
    import torch

    from slimtune.models import load_model
    from slimtune.sparsity import sparsify_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model_path)
    method = args._method
    options = {"scope": "row"} if method == "magnitude" and args._pattern == "unstructured" else None
    calibration = {"source": "news", "n_samples": args._n, "seq_len": args.seq_len, "seed": 0}
    t0, c0 = time.perf_counter(), time.process_time()
    report = sparsify_model(model, tokenizer, method, 0.5 if args._pattern == "unstructured" else None,
                            args._pattern, calibration if method != "magnitude" else None, options=options,
                            progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.save_pretrained(args._out)
    tokenizer.save_pretrained(args._out)
    return {"side": "slimtune", "method": method, "pattern": args._pattern, "n_samples": args._n,
            "wall_s": wall, "cpu_s": cpu, "apply_s": report["total"]["wall_time_s"],
            "sparsity": report["total"]["sparsity"], "torch": torch.__version__, "out": args._out}


# --------------------------------------------------------------------------- driver

def run_slimtune(args, method, pattern, n, out) -> dict:
    cmd = [sys.executable, __file__, "--_worker", "--_method", method, "--_pattern", pattern, "--_n", str(n),
           "--_out", str(out), "--model-path", args.model_path, "--seq-len", str(args.seq_len),
           "--threads", str(args.threads)]
    return _last_json(subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True),
                      f"slimtune {method} {pattern} n={n}")


def run_llmc(args, py, method, pattern, calib, out) -> dict:
    cmd = [str(py), str(HERE / "_llmc_worker.py"), "--model", args.model_path, "--calib", str(calib),
           "--method", method, "--pattern", pattern, "--threads", str(args.threads), "--out", str(out)]
    return _last_json(subprocess.run(cmd, env=llmc_env(args.threads), capture_output=True, text=True),
                      f"llm-compressor {method} {pattern}")






def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "pruned model")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--sweep", action="store_true",
                    help="also Wanda vs SparseGPT (slimtune) at 16/64/128 calibration sequences, per pattern")
    ap.add_argument("--sweep-samples", default="16,64,128")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 4 x 64 tokens, slimtune only: seconds")
    ap.add_argument("--_method", help=argparse.SUPPRESS)
    ap.add_argument("--_pattern", help=argparse.SUPPRESS)
    ap.add_argument("--_n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(slimtune_worker(args)))
        return 0

    import torch

    from slimtune.data.calibration import calibration_batches
    from slimtune.models import load_model

    tmp, work = setup_run(args)
    if args.quick:
        args.sweep_samples = "4,8"
    methods, patterns = args.methods.split(","), args.patterns.split(",")
    sweep_ns = [int(x) for x in args.sweep_samples.split(",")]

    _, tokenizer = load_model(args.model_path)
    calib_files = {}
    for n in sorted({args.samples, *(sweep_ns if args.sweep else [])}):
        calib_files[n] = work / f"calib-news-{n}x{args.seq_len}.pt"
        torch.save(calibration_batches(tokenizer, "news", n, args.seq_len, seed=0), calib_files[n])
    py = None if args.skip_llmc else llmc_python()

    print(f"model {args.model} ({args.model_path}), calibration {args.samples} x {args.seq_len} news tokens (seed 0), "
          f"ppl over {args.windows} x {args.seq_len} wiki tokens, fp32, {args.threads} threads; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; llm-compressor: "
          f"{llmc_version(py)}; load average before: {_loadavg()}",
          flush=True)

    # Main comparison: alternate sides (and which side goes first) so load drifts hit both alike.
    jobs, k = [], 0
    for pattern in patterns:
        for method in methods:
            sides = ["slimtune"] + (["llmc"] if py is not None and method != "magnitude" else [])
            if k % 2:
                sides.reverse()
            k += len(sides) > 1
            jobs += [(side, method, pattern, args.samples) for side in sides]
    if args.sweep:
        for n in sweep_ns:
            for pattern in patterns:
                for method in ("wanda", "sparsegpt"):
                    if n != args.samples or method not in methods:
                        jobs.append(("slimtune", method, pattern, n))

    results = []
    for side, method, pattern, n in jobs:
        out = work / f"{side}-{method}-{pattern.replace(':', 'of')}-{n}"
        try:
            r = (run_slimtune(args, method, pattern, n, out) if side == "slimtune"
                 else run_llmc(args, py, method, pattern, calib_files[n], out))
        except RuntimeError as e:
            print(f"  {side:<8} {method:<9} {pattern:<12} n={n:<4} FAILED: {e}", flush=True)
            continue
        r["load_after"] = _loadavg()
        results.append(r)
        print(f"  {side:<8} {method:<9} {pattern:<12} n={n:<4} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU "
              f"sparsity {r['sparsity']:.4f}  load {r['load_after']}", flush=True)

    # One evaluator over every saved model and the dense one.
    ppl_dense = evaluate(args.model_path, args)
    print(f"  evaluated dense: ppl {ppl_dense:.2f}", flush=True)
    for r in results:
        r["ppl"] = evaluate(r["out"], args)
        print(f"  evaluated {r['side']} {r['method']} {r['pattern']} n={r['n_samples']}: ppl {r['ppl']:.2f}", flush=True)

    def find(side, method, pattern, n):
        return next((r for r in results if (r["side"], r["method"], r["pattern"], r["n_samples"]) == (side, method, pattern, n)), None)

    def ratio(a, b):
        return f"{a / b:.3f}" if a is not None and b else "-"

    print(f"\ncalibration {args.samples} x {args.seq_len} news tokens; ppl: {args.windows} x {args.seq_len} wiki tokens")
    print("| method    | pattern      | slimtune ppl | llmc ppl | ppl ratio | issue ref | slimtune s | llmc s | time ratio "
          "| slimtune CPU s | llmc CPU s | CPU ratio |")
    print("|-----------|--------------|-------------:|---------:|----------:|----------:|-----------:|-------:|-----------:"
          "|---------------:|-----------:|----------:|")
    print(f"| dense     | -            | {ppl_dense:12.2f} | {ppl_dense:8.2f} |     1.000 | "
          f"{REFERENCE[('dense', '-')]:9.1f} |          - |      - |          - |              - |          - |         - |")
    rows = [{"method": "dense", "pattern": "-", "ppl": ppl_dense}]
    for pattern in patterns:
        for method in methods:
            s, l = find("slimtune", method, pattern, args.samples), find("llmc", method, pattern, args.samples)
            g = lambda r, key: r[key] if r else None  # noqa: E731
            ref = REFERENCE.get((method, pattern))
            print(f"| {method:<9} | {pattern:<12} | {_fmt(g(s, 'ppl'), '12.2f'):>12} | {_fmt(g(l, 'ppl'), '8.2f'):>8} "
                  f"| {ratio(g(s, 'ppl'), g(l, 'ppl')):>9} | {_fmt(ref, '9.1f'):>9} "
                  f"| {_fmt(g(s, 'wall_s'), '10.1f'):>10} | {_fmt(g(l, 'wall_s'), '6.1f'):>6} "
                  f"| {ratio(g(s, 'wall_s'), g(l, 'wall_s')):>10} | {_fmt(g(s, 'cpu_s'), '14.1f'):>14} "
                  f"| {_fmt(g(l, 'cpu_s'), '10.1f'):>10} | {ratio(g(s, 'cpu_s'), g(l, 'cpu_s')):>9} |")
            rows.append({"method": method, "pattern": pattern, "slimtune": s, "llmc": l, "reference": ref})

    if args.sweep:
        print("\nslimtune, Wanda vs SparseGPT as calibration grows (news text, seed 0):")
        print("| pattern      | sequences | Wanda ppl | SparseGPT ppl | SparseGPT / Wanda | Wanda s | SparseGPT s |")
        print("|--------------|----------:|----------:|--------------:|------------------:|--------:|------------:|")
        for pattern in patterns:
            for n in sweep_ns:
                w, sg = find("slimtune", "wanda", pattern, n), find("slimtune", "sparsegpt", pattern, n)
                print(f"| {pattern:<12} | {n:9d} | {_fmt(w and w['ppl'], '9.2f'):>9} | {_fmt(sg and sg['ppl'], '13.2f'):>13} "
                      f"| {ratio(sg and sg['ppl'], w and w['ppl']):>17} | {_fmt(w and w['wall_s'], '7.1f'):>7} "
                      f"| {_fmt(sg and sg['wall_s'], '11.1f'):>11} |")
    print(f"\ns: wall time of the pruning call only (model loaded, before saving); CPU s: process CPU time of the same "
          f"call (all threads). Load average after: {_loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "dense_ppl": ppl_dense, "rows": rows,
                                               "raw": results}, indent=1, default=str))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
