"""Adapter training-step time and peak memory: slimtune's LoRA, NLS, SparsePEFT and QA-SparsePEFT vs
PEFT's LoRA vs the frozen floor.

    python bench/lora_step.py                       # default model, r=32, 4x256 tokens, fp32, 2 threads
    python bench/lora_step.py --dropout 0.1 0.0     # one table per dropout, floor measured once per round
    python bench/lora_step.py --quick               # seconds: tiny random Llama, for a smoke test
    python bench/nls.py                             # the NLS / QA-SparsePEFT variants (bench/nls.py)

Variants, all on the same model, token batch (fixed seed), rank, alpha, targets and dropout:
  floor     every weight frozen, the input embeddings require grad (`enable_input_require_grads`),
            so backward runs through the whole network computing activation gradients only.
            No optimizer (nothing to update). This is the lower bound for any adapter method.
  peft      `peft.get_peft_model(model, LoraConfig(r, lora_alpha, lora_dropout, target_modules))`.
  slimtune  `slimtune.adapters.lora.add_lora(model, target_modules(model), r, alpha, dropout)`.
  nls       slimtune's elastic LoRA over [r, 3r/4, r/2], Shears' rank groups; before every step the
            sub-adapter is sampled and set exactly as ElasticSampler does in training (counted).
  sparsepeft     the base pruned 50% (magnitude, per row) and the update masked by its zeros.
  qa-sparsepeft  that sparse base quantized INT4 g64 asym (RTN) and the update trained through its
                 grid (quantization-aware, straight-through); +nls: elastic ranks as above.
  The sparse variants have no adapter dropout (their update is applied to the weight), so they run
  only in the dropout-0 table. Their base preparation is not timed.

A step is: forward (`model(input_ids, labels=input_ids)`), loss, backward, AdamW step, zero_grad.
`model.train()` is on, so LoRA dropout is active. Each variant runs in its own fresh Python
subprocess (so one variant's allocator state, caches or threads cannot affect another), with
`torch.set_num_threads(--threads)`. `--rounds R` repeats the whole set R times, rotating the order
of the variants each round, so slow drifts in machine load hit all variants alike; the reported
s/step is the median over all measured steps of all rounds (warm-up steps excluded); the table also
shows the fastest step ("min") and the median process CPU time (all threads), which are less
distorted when other jobs share the cores (with 2 OpenMP threads on 2 busy cores a step can take
several times longer).

Memory: after the model, adapter, optimizer and batch are built, the worker runs `gc.collect()`
and glibc `malloc_trim(0)`, then resets the kernel's peak-RSS counter (VmHWM, by writing "5" to
/proc/self/clear_refs) and reads the current RSS (VmRSS). After the warm-up and measured steps it
reads VmHWM again. "peak MB" is VmHWM - baseline RSS: the peak resident memory that training added
on top of the loaded model, i.e. activations saved for backward, gradients, temporaries, and the
AdamW state (created in the first step). Where clear_refs is unavailable it falls back to
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the peak since process start) minus the baseline,
which may then include a higher peak from model loading; the output says which was used.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- worker side

def _proc_status(field: str) -> int | None:
    """A VmXXX field of /proc/self/status, in bytes (None where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _build(args, variant: str, dropout: float):
    import torch

    from slimtune.adapters.lora import add_lora
    from slimtune.models import load_model, target_modules

    model, _ = load_model(args.model_path or args.model)
    model.train()
    vocab = model.config.vocab_size
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    torch.manual_seed(args.seed)
    if variant == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
    elif variant == "peft":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGETS)
        model = get_peft_model(model, cfg)
        model.train()
    elif variant in ADAPTER_VARIANTS:
        sparse, quant_aware, elastic = ADAPTER_VARIANTS[variant]
        if sparse:
            _sparse_int4_base(model, quant_aware)
        names = target_modules(model, TARGETS)
        space = sorted({args.rank, 3 * args.rank // 4, args.rank // 2}, reverse=True) if elastic else None
        add_lora(model, names, r=args.rank, alpha=alpha, dropout=dropout, rank_space=space, sparse=sparse,
                 quant_aware=quant_aware)
        if elastic:
            from slimtune.architectures import architecture_of
            from slimtune.nas import ElasticSampler, ElasticSpace

            sampler = ElasticSampler(model, ElasticSpace.build(names, space, "shears", architecture_of(model)), seed=args.seed)
            model.before_step = lambda step: sampler.space.apply(model, sampler.sample(step)[0])  # uniform: one
        model.train()
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    n_adapted = sum(1 for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=g)
    return model, opt, ids, sum(p.numel() for p in params), n_adapted


# variant: (sparse base + masked update, INT4 base + quantization-aware, elastic ranks)
ADAPTER_VARIANTS = {"slimtune": (False, False, False), "nls": (False, False, True),
                    "sparsepeft": (True, False, False), "sparsepeft+nls": (True, False, True),
                    "qa-sparsepeft": (True, True, False), "qa-sparsepeft+nls": (True, True, True)}


def _sparse_int4_base(model, quantize: bool) -> None:
    """Prune 50% per row by magnitude and (optionally) quantize INT4 g64 asym with RTN, in place."""
    from slimtune.quant import quantize_model
    from slimtune.sparsity import sparsify_model

    sparsify_model(model, None, "magnitude", 0.5, progress=False)
    if quantize:
        quantize_model(model, None, "rtn", 4, 64, symmetric=False, progress=False)


def supports(variant: str, dropout: float) -> bool:
    return dropout == 0.0 or not ADAPTER_VARIANTS.get(variant, (False,))[0]


def worker(args, variant: str, dropout: float) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, opt, ids, n_trainable, n_adapted = _build(args, variant, dropout)
    torch.manual_seed(args.seed + 1)  # dropout masks
    _trim()
    exact_peak = _reset_peak_rss()
    base_rss = _proc_status("VmRSS") or 0
    times, cpu_times, losses = [], [], []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        if hasattr(model, "before_step"):
            model.before_step(i)
        loss = model(input_ids=ids, labels=ids).loss
        if hasattr(model, "extra_loss"):  # a regularizer of the method (AdaLoRA's orthogonality)
            loss = loss + model.extra_loss(model, None)
        loss.backward()
        if opt is not None:
            opt.step()
            if hasattr(model, "after_step"):  # reads the gradients (AdaLoRA's allocation), so before zero_grad
                model.after_step(i)
            opt.zero_grad(set_to_none=True)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
    if exact_peak:
        peak = _proc_status("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "dropout": dropout, "times": times, "cpu_times": cpu_times, "losses": losses,
            "peak_mb": (peak - base_rss) / 2**20, "base_rss_mb": base_rss / 2**20,
            "peak_method": "VmHWM" if exact_peak else "ru_maxrss", "trainable": n_trainable,
            "adapted_modules": n_adapted, "torch": torch.__version__}


# --------------------------------------------------------------------------- driver side

def run_worker(script, options: list[str], threads: int, what: str) -> dict:
    """Run `script` with `options` in a fresh process (this repository's src first on the path, `threads`
    OpenMP threads) and return the JSON of its last output line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, str(script), *options], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {what} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_worker(args, variant: str, dropout: float) -> dict:
    options = ["--_worker", variant, "--_worker-dropout", str(dropout),
               "--rank", str(args.rank), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--seed", str(args.seed), "--model", args.model]
    if args.alpha is not None:
        options += ["--alpha", str(args.alpha)]
    if args.model_path:
        options += ["--model-path", args.model_path]
    return run_worker(__file__, options, args.threads, f"{variant} (dropout {dropout})")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model spec for slimtune.models.load_model")
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2*rank)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.1],
                    help="LoRA dropout(s); one table per value (default 0.1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="measured steps per variant and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="repeat all variants, rotating their order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="floor,peft,slimtune")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2x32 tokens, r=8: seconds")
    ap.add_argument("--json", default=None, help="also write all raw results to this JSON file")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_worker-dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(worker(args, args._worker, args._worker_dropout)))
        return 0

    tmp = None
    if args.quick:
        from slimtune.models import build_tiny_model

        tmp = tempfile.TemporaryDirectory()
        args.model_path = str(build_tiny_model(Path(tmp.name) / "tiny"))
        args.model = "tiny-llama"
        args.rank, args.batch, args.seq_len = 8, 2, 32
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    variants = args.variants.split(",")
    jobs = []
    if "floor" in variants:
        jobs.append(("floor", 0.0))
    for d in args.dropout:
        jobs += [(v, d) for v in variants if v != "floor" and supports(v, d)]
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    print(f"model {args.model}, r={args.rank}, alpha={alpha:g}, targets {','.join(TARGETS)}, "
          f"{args.batch}x{args.seq_len} tokens, fp32, {args.threads} threads, warmup {args.warmup}, "
          f"steps {args.steps}, rounds {args.rounds}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average before: {_loadavg()}", flush=True)
    results: dict[tuple, list[dict]] = {j: [] for j in jobs}
    for rnd in range(args.rounds):
        order = jobs[rnd % len(jobs):] + jobs[:rnd % len(jobs)]
        for job in order:
            r = _run_worker(args, *job)
            results[job].append(r)
            print(f"  round {rnd + 1}: {job[0]:<17} dropout {job[1]:<4g} "
                  f"steps {' '.join(f'{t:.2f}' for t in r['times'])} s, peak +{r['peak_mb']:.0f} MB, "
                  f"load {_loadavg()}", flush=True)
    if tmp is not None:
        tmp.cleanup()

    def summary(job):
        rs = results[job]
        return {"t": statistics.median([t for r in rs for t in r["times"]]),
                "min": min(t for r in rs for t in r["times"]),
                "cpu": statistics.median([t for r in rs for t in r["cpu_times"]]),
                "mem": statistics.median([r["peak_mb"] for r in rs]), "r0": rs[0]}

    def ratio(a, b):
        return f"{a / b:.3f}" if b else "-"

    floor = summary(("floor", 0.0)) if ("floor", 0.0) in results else None
    rows_out = []
    for d in args.dropout:
        print(f"\ndropout {d:g}:")
        print("| variant           | s/step | vs PEFT | vs LoRA | vs floor | min s/step | min vs PEFT | CPU s/step "
              "| CPU vs PEFT | peak MB | mem vs PEFT | trainable | LoRA modules |")
        print("|-------------------|-------:|--------:|--------:|---------:|-----------:|------------:|-----------:"
              "|------------:|--------:|------------:|----------:|-------------:|")
        ours = summary(("slimtune", d)) if ("slimtune", d) in results else None
        peft = summary(("peft", d)) if ("peft", d) in results else None
        row_jobs = ([("floor", 0.0)] if floor else []) + [(v, d) for v in variants if v != "floor" and supports(v, d)]
        for job in row_jobs:
            s = summary(job)
            print(f"| {job[0]:<17} | {s['t']:6.3f} | {ratio(s['t'], peft and peft['t']):>7} "
                  f"| {ratio(s['t'], ours and ours['t']):>7} "
                  f"| {ratio(s['t'], floor and floor['t']):>8} | {s['min']:10.3f} "
                  f"| {ratio(s['min'], peft and peft['min']):>11} | {s['cpu']:10.3f} "
                  f"| {ratio(s['cpu'], peft and peft['cpu']):>11} | {s['mem']:7.0f} "
                  f"| {ratio(s['mem'], peft and peft['mem']):>11} | {s['r0']['trainable']:>9} "
                  f"| {s['r0']['adapted_modules']:>12} |")
            rows_out.append({"variant": job[0], "dropout": d, "s_per_step": s["t"], "min_s_per_step": s["min"],
                             "cpu_s_per_step": s["cpu"], "peak_mb": s["mem"]})
    first = next(iter(results.values()))[0]
    print(f"\nvs LoRA: against slimtune's own LoRA (variant slimtune). s/step: median wall time of the measured steps (min s/step: the fastest); CPU s/step: median process CPU time (all "
          f"threads) of the same steps; peak MB: peak RSS growth during training ({first['peak_method']}). "
          f"Load average after: {_loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "rows": rows_out,
             "raw": [r for rs in results.values() for r in rs]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
