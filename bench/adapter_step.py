"""Training step of the adapter methods (LoRA, NLS, AdaLoRA, PaCA; slimtune's and PEFT's): time and
peak memory at equal trainable parameters, in one run.

    python bench/adapter_step.py                  # default model, r=16, 2x256 tokens, fp32, 2 threads
    python bench/adapter_step.py --rounds 3       # repeat, rotating the order of the variants
    python bench/adapter_step.py --quick          # tiny random Llama: seconds

Variants, on the same model, token batch, targets (q/k/v/o/gate/up/down) and no dropout:
  paca          slimtune's PaCA (adapters/paca.py): per module c = round(r·(in+out)/out) random input
                columns train in place, so its trainable parameters equal LoRA's r·(in+out) up to rounding.
  slimtune      slimtune's LoRA (adapters/lora.py), rank r.
  peft          PEFT's LoRA, rank r.
  nls           slimtune's NLS: LoRA of maximal rank r, a rank from {r, 3r/4, r/2} sampled per step.
  lonas         LoNAS: NLS plus elastic base widths (MLP channels 100-50%, attention heads in KV groups),
                ranks and widths sampled per step (uniform rule).
  nls-max, lonas-max  the same super-networks held at their maximal configuration every step: the
                cost of the elastic machinery itself (issue goal: LoNAS <= 1.1x NLS there).
  adalora       slimtune's AdaLoRA (adapters/adalora.py), init rank r (+ r singular values per module),
                target r/2; the step includes the orthogonality regularizer (weight 0.5) and the rank
                allocation after the optimizer step (every step: deltaT 1, tinit 0, PEFT's defaults).
  peft-adalora  PEFT's AdaLoRA with the same settings (its forward adds the regularizer;
                `update_and_allocate` after the optimizer step).
A step is forward + loss + backward + AdamW step (+ allocation) + zero_grad; each variant runs in its
own fresh process with the timing and memory method of bench/lora_step.py (median s/step over the
measured steps, peak RSS added by training above the loaded model: VmHWM after a clear_refs reset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_step  # noqa: E402

VARIANTS = ("paca", "slimtune", "peft", "nls", "adalora", "peft-adalora", "lonas", "nls-max", "lonas-max")
ORTH_REG = 0.5


def _build(args, variant: str, dropout: float):
    if variant not in ("paca", "adalora", "peft-adalora", "lonas", "nls-max", "lonas-max"):
        return _lora_build(args, variant, 0.0)
    import torch

    from slimtune.models import load_model, target_modules

    model, _ = load_model(args.model_path or args.model)
    model.train()
    total = args.warmup + args.steps
    torch.manual_seed(args.seed)
    if variant == "paca":
        from slimtune.adapters.paca import add_paca

        add_paca(model, target_modules(model, lora_step.TARGETS), rank=args.rank, selection="random", seed=args.seed)
    elif variant == "adalora":
        from slimtune.adapters.adalora import (AdaLoraOptions, RankAllocator, add_adalora, adalora_layers,
                                               orthogonality)

        add_adalora(model, target_modules(model, lora_step.TARGETS), r=args.rank, alpha=2.0 * args.rank)
        allocator = RankAllocator(adalora_layers(model), AdaLoraOptions(
            init_r=args.rank, target_r=args.rank // 2, orth_reg_weight=ORTH_REG), total)
        model.extra_loss, model.after_step = orthogonality(ORTH_REG), allocator.update_and_allocate
    elif variant in ("lonas", "nls-max", "lonas-max"):
        from slimtune.adapters.lora import add_lora
        from slimtune.nas import ElasticSampler
        from slimtune.nas.lonas import build_space, width_dimensions

        names = target_modules(model, lora_step.TARGETS)
        widths = width_dimensions(model, ["mlp", "heads"]) if variant != "nls-max" else None
        ranks = sorted({args.rank, 3 * args.rank // 4, args.rank // 2}, reverse=True)
        add_lora(model, names, r=args.rank, alpha=2.0 * args.rank, dropout=0.0, rank_space=ranks)
        space = build_space(model, names, ranks, "shears", widths)
        if variant == "lonas":
            sampler = ElasticSampler(model, space, seed=args.seed)
            model.before_step = lambda step: space.apply(model, sampler.sample(step)[0])
        else:
            space.apply(model, space.maximal())
    else:
        from peft import AdaLoraConfig, get_peft_model

        model = get_peft_model(model, AdaLoraConfig(init_r=args.rank, target_r=args.rank // 2, lora_alpha=2.0 * args.rank,
                                                    lora_dropout=0.0, orth_reg_weight=ORTH_REG, total_step=total,
                                                    target_modules=lora_step.TARGETS))
        model.train()
        model.after_step = model.base_model.update_and_allocate
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=g)
    return model, torch.optim.AdamW(params, lr=1e-4), ids, sum(p.numel() for p in params), len(params)


_lora_build = lora_step._build


def _run(args, variant: str) -> dict:
    options = ["--_worker", variant, "--rank", str(args.rank), "--batch", str(args.batch),
               "--seq-len", str(args.seq_len), "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seed", str(args.seed), "--model", args.model]
    if args.model_path:
        options += ["--model-path", args.model_path]
    return lora_step.run_worker(__file__, options, args.threads, variant)


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
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
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
    variants = tuple(args.variants.split(","))
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
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
    for method, ref in (("paca", "slimtune"), ("paca", "peft"), ("nls", "slimtune"), ("adalora", "slimtune"),
                        ("adalora", "peft-adalora"), ("slimtune", "peft"), ("lonas", "nls"),
                        ("lonas-max", "nls-max"), ("nls-max", "slimtune")):
        if method in rows and ref in rows:
            print(f"{method} / {ref}: time {rows[method][0] / rows[ref][0]:.2f}x, peak memory "
                  f"{rows[method][1] / rows[ref][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
