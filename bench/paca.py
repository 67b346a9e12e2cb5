"""PaCA vs LoRA training step: time and peak memory at equal trainable parameters.

    python bench/paca.py                  # default model, r=16, 2x256 tokens, fp32, 2 threads
    python bench/paca.py --quick          # tiny random Llama: seconds

Variants, on the same model, token batch, targets (q/k/v/o/gate/up/down) and no dropout:
  paca      slimtune's PaCA (adapters/paca.py): per module c = round(r·(in+out)/out) random input columns
            train in place, so its trainable parameters equal LoRA's r·(in+out) up to rounding.
  slimtune  slimtune's LoRA (adapters/lora.py), rank r.
  peft      PEFT's LoRA, rank r.
A step is forward + loss + backward + AdamW step + zero_grad; each variant runs in its own fresh
process with the timing and memory method of bench/lora_step.py (median s/step over the measured
steps, peak RSS added by training above the loaded model: VmHWM after a clear_refs reset).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_step  # noqa: E402

VARIANTS = ("paca", "slimtune", "peft")


def _build(args, variant: str, dropout: float):
    if variant != "paca":
        return _lora_build(args, variant, 0.0)
    import torch

    from slimtune.adapters.paca import add_paca
    from slimtune.models import load_model, target_modules

    model, _ = load_model(args.model_path or args.model)
    model.train()
    add_paca(model, target_modules(model, lora_step.TARGETS), rank=args.rank, selection="random", seed=args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=g)
    return model, torch.optim.AdamW(params, lr=1e-4), ids, sum(p.numel() for p in params), len(params)


_lora_build = lora_step._build


def _run(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--_worker", variant, "--rank", str(args.rank), "--batch", str(args.batch),
           "--seq-len", str(args.seq_len), "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--model", args.model]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {variant} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.alpha = None
    if args._worker:
        lora_step._build = _build
        print(json.dumps(lora_step.worker(args, args._worker, 0.0)))
        return 0
    if args.quick:
        import tempfile

        from slimtune.models import build_tiny_model

        args.model_path = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
        args.rank, args.batch, args.seq_len = 8, 2, 32
    results = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for v in order:
            results[v].append(_run(args, v))
    print(f"model {args.model_path or args.model}, r={args.rank}, {args.batch}x{args.seq_len} tokens, "
          f"{args.threads} threads, {args.steps} steps x {args.rounds} rounds, load {lora_step._loadavg()}")
    rows = {}
    print("| variant | trainable | s/step (median) | min | CPU s/step | peak MB |\n|---|---|---|---|---|---|")
    for v, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        cpu = [t for run in runs for t in run["cpu_times"]]
        peak = statistics.median(run["peak_mb"] for run in runs)
        rows[v] = (statistics.median(times), peak)
        print(f"| {v} | {runs[0]['trainable']:,} | {rows[v][0]:.3f} | {min(times):.3f} | "
              f"{statistics.median(cpu):.3f} | {peak:.0f} |")
    for ref in ("slimtune", "peft"):
        print(f"paca / {ref}: time {rows['paca'][0] / rows[ref][0]:.2f}x, peak memory "
              f"{rows['paca'][1] / rows[ref][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
