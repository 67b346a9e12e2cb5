"""Training step time and peak memory of the baselines' methods on the sparse INT4 base, trained exactly as
bench/baselines.py trains them (issue 19): the same finetune options, base, task mix and batch, in one run.

    python bench/baselines_step.py --model /work/bl2/keep/sparse-int4      # a Wanda 50% + GPTQ INT4 base
    python bench/baselines_step.py --quick                                 # tiny random Llama: a smoke test

Each method runs `api.finetune` for --steps optimizer steps in its own fresh process (--threads threads):
time per step = the trainer's runtime / steps (the runtime covers every step, the first ones' warm-up
included, so use enough of them); peak memory = the process's high-water mark minus its resident set
before finetune was called (model, adapter, optimizer, activations). Methods, at the same trainable budget:
  lora      LoRA r (the median of the NLS space), masked and quantization-aware (QA-SparsePEFT, float W)
  nls       the NLS super-adapter over the space (r_max trains, a rank sampled per step), same mode
  adalora   AdaLoRA from r_max to an average r (allocation from step steps/10 to steps/5), masked, QA
  paca      PaCA with r(in+out)/out input columns per module, trained in place on the sparse base
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("lora", "nls", "adalora", "paca")


def options(method: str, space: list[int], steps: int, alpha: float, **mode) -> dict:
    """finetune options of one adapter method at the benches' equal budget (bench/sqft.py and baselines.py
    train with these): nls over `space` at `alpha`; lora and paca at the space's median rank, adalora from its
    largest to its median rank, all at alpha scaled to that rank. `mode`: e.g. sparse_adapter, quant_aware."""
    fixed = space[(len(space) - 1) // 2]
    if method == "nls":
        return dict(adapter="nls", rank_space=space, alpha=alpha, **mode)
    scaled = dict(alpha=alpha * fixed / space[0], **mode)
    if method == "adalora":
        return dict(adapter="adalora", **scaled, adalora=dict(
            init_r=space[0], target_r=fixed, tinit=steps // 10, tfinal=steps // 5, deltaT=max(1, steps // 20)))
    return dict(adapter=method, rank=fixed, **scaled)


# how the baselines bench trains each method on the sparse INT4 base
QA = dict(sparse_adapter=True, quant_aware=True)
MODES = {"lora": dict(QA, qa_weights="float"), "nls": dict(QA, qa_weights="float"), "adalora": QA,
         "paca": dict(sparse_adapter=True)}


def worker(args) -> dict:
    import torch

    from _common import rss_mb
    from slimtune import api

    torch.set_num_threads(args.threads)
    before = rss_mb()
    Path("/proc/self/clear_refs").write_text("5")
    with tempfile.TemporaryDirectory() as tmp:
        out = api.finetune(args.model, task=args.task, out=Path(tmp) / "a", max_steps=args.steps, learning_rate=5e-4,
                           batch_size=8, warmup_steps=0, max_length=args.max_length, save_steps=100000, seed=42,
                           progress=False, **options(args.worker, [int(r) for r in args.rank_space.split(",")],
                                                     args.steps, 64.0, **MODES[args.worker]))
        metrics = json.loads((out / "slimtune.json").read_text())["metrics"]
    return {"s_per_step": metrics["runtime_s"] / metrics["steps"], "peak_mb": rss_mb("VmHWM:") - before,
            "trainable": metrics["adapter_parameters"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="the sparse INT4 base (bench/baselines.py's --keep holds it as sparse-int4)")
    ap.add_argument("--task", default="suite:commonsense-evals")
    ap.add_argument("--rank-space", default="32,24,16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="each method this many times, order rotated; medians")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        from slimtune import api
        from slimtune.models import build_tiny_model

        tiny = build_tiny_model(Path(tmp.name) / "tiny")
        args.model = str(api.quantize(tiny, out=Path(tmp.name) / "int4", method="rtn", group_size=32, progress=False))
        args.task, args.rank_space, args.steps, args.max_length = "polarity", "8,6,4", 3, 64
    if not args.model:
        raise SystemExit("give --model (a sparse INT4 base) or --quick")
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            cmd = [sys.executable, __file__, "--worker", m, "--model", args.model, "--task", args.task, "--rank-space",
                   args.rank_space, "--steps", str(args.steps), "--max-length", str(args.max_length), "--threads",
                   str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{m} failed:\n{out.stderr[-3000:]}")
            runs[m].append(json.loads(out.stdout.splitlines()[-1]))
    ref = {k: statistics.median(r[k] for r in runs[methods[0]]) for k in ("s_per_step", "peak_mb")}
    print(f"\n{args.steps} steps of 8 x <= {args.max_length} tokens of {args.task}, {args.threads} threads, "
          f"{args.rounds} round(s); medians; ratios vs {methods[0]}")
    print(f"| method | trainable | s/step | vs {methods[0]} | peak MB | vs {methods[0]} |\n|---|---:|---:|---:|---:|---:|")
    for m in methods:
        s, p = (statistics.median(r[k] for r in runs[m]) for k in ("s_per_step", "peak_mb"))
        print(f"| {m} | {runs[m][0]['trainable']:,} | {s:.3f} | {s / ref['s_per_step']:.2f} | {p:.0f} | "
              f"{p / ref['peak_mb']:.2f} |")


if __name__ == "__main__":
    main()
