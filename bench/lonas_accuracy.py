"""The trained half of bench/lonas.py (issue 16): LoRA vs LoNAS heuristic vs LoNAS searched, each merged,
scored on held-out test examples and timed (see bench/lonas.py's docstring for the settings)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
ROWS = [("base", "dense base, untuned"), ("lora", "LoRA r32, merged"), ("heuristic", "LoNAS heuristic (median), merged"),
        ("searched", "LoNAS searched, merged")]


def _accuracy(result: dict) -> tuple[float, list[float]]:
    """The headline evaluate reported: a suite's macro average, else the accuracy, with its interval."""
    key = "average" if result.get("members") else "acc"
    return result[key], result[f"{key}_ci"]


def compare(args) -> None:
    from _common import cached_result, stage_runner
    from lonas import measure
    from slimtune import api
    from slimtune.evaluate.compare import paired_difference
    from slimtune.models import build_tiny_model, load_model
    from slimtune.nas.cost import model_costs

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model, task, limit = args.model, args.task, args.limit
    train = dict(max_steps=args.max_steps, learning_rate=args.lr, batch_size=8, warmup_steps=10, max_length=128,
                 save_steps=1000, progress=False)
    trials, search_limit, prefill = args.trials, args.search_limit, args.prefill
    if args.quick:
        model = str(work / "tiny") if (work / "tiny").exists() else str(build_tiny_model(work / "tiny"))
        task, limit, trials, search_limit, prefill = "polarity", 40, 4, 20, 16
        train.update(max_steps=4, max_length=64)
    common = dict(task=task, seed=args.seed, alpha=64.0, dropout=0.1, targets=TARGETS, **train)

    stage = stage_runner(work, [task])
    # super-network variants keep their own artifacts under one --keep (LoRA and the base are shared)
    variants = ((args.width_order, "original"), (args.sampler, "uniform"), (args.widths.replace(",", "-"), "mlp-heads"))
    tag = "".join(f"-{v}" for v, default in variants if v != default) + ("-distill" if args.distill else "")

    print(f"model {args.model}, task {task} (split seed 0), seed {args.seed}, {train['max_steps']} steps, lr {args.lr:g}, "
          f"super-network widths {args.width_order} order, {args.sampler} sampler, search {trials} trials on "
          f"{search_limit} validation examples, budget {args.budget:g}, elastic widths {args.widths}"
          f"{', distilled from the merged LoRA' if args.distill else ''}", flush=True)
    lora = stage("lora", lambda p: api.finetune(model, out=p, adapter="lora", rank=32, **common))
    models = {"base": model, "lora": str(stage("lora-merged", lambda p: api.merge(lora, out=p)))}
    distill = {"teacher": models["lora"]} if args.distill else {}
    supernet = stage(f"lonas-super{tag}", lambda p: api.finetune(
        model, out=p, adapter="nls", rank_space=[32, 28], groups="shears", widths=args.widths.split(","),
        width_order=args.width_order, sampler=args.sampler, distill=distill, **common))
    heuristic = stage(f"lonas-median{tag}", lambda p: api.extract(supernet, out=p, select="median", progress=False))
    search = stage(f"lonas-search{tag}", lambda p: api.search(supernet, out=p, objectives=["accuracy", "total_params"],
                                                              trials=trials, limit=search_limit, progress=False))
    searched = stage(f"lonas-searched{tag}", lambda p: api.extract(out=p, from_search=search,
                                                                   pick=f"budget={args.budget}:0", progress=False))
    for key, adapter in (("heuristic", heuristic), ("searched", searched)):
        models[key] = str(stage(f"{key}-merged{tag}", lambda p, a=adapter: api.merge(a, out=p)))

    def scored(key):
        return cached_result(work / f"{key}{'' if key in ('base', 'lora') else tag}.eval.json",
                             {"task": task, "limit": limit},
                             lambda: api.evaluate(models[key], task=task, limit=limit, progress=False))

    results = {key: scored(key) for key in models}
    nets = {key: load_model(path)[0].eval() for key, path in models.items()}
    vocab = nets["base"].config.vocab_size
    ids = torch.randint(0, vocab, (1, prefill), generator=torch.Generator().manual_seed(0))
    speed = measure({k: nets[k] for k in ("lora", "heuristic", "searched")}, ids, args.decode, args.repeats)
    rows = []
    for key, label in ROWS:
        acc, ci = _accuracy(results[key])
        costs = model_costs(nets[key])
        row = {"key": key, "model": label, "acc": acc, "ci": ci, "n": results[key]["n"],
               "params": costs["parameters"], "macs_per_token": costs["macs_per_token"],
               "widths": costs.get("widths") or costs.get("block_widths"), **speed.get(key, {})}
        if key in ("heuristic", "searched"):
            d = paired_difference(results[key], results["lora"], results[key].get("members"))
            row["vs_lora"] = {"diff": d["diff"], "ci": d["ci"], "excludes_zero": d["excludes_zero"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ref = rows[1]
    what = "macro average over the suite's members" if task.startswith("suite:") else "accuracy"
    print(f"\n{task}: {what} on {ref['n']} held-out test examples with its 95% bootstrap interval; MACs per token at "
          f"128 positions; CPU latency ({args.threads} threads, min of {args.repeats} interleaved rounds): prefill of "
          f"{prefill} tokens, greedy decode of {args.decode}\n")
    print("| model | test acc [95% CI] | - LoRA [95% CI] | params | MACs/token | prefill ms | decode ms/token |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        diff = r.get("vs_lora")
        diff = f"{diff['diff']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff else "-"
        timing = (f"{r['prefill_ms']:.0f} ({ref['prefill_ms'] / r['prefill_ms']:.2f}x) | {r['decode_ms_per_token']:.1f} "
                  f"({ref['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x)") if "prefill_ms" in r else "- | -"
        print(f"| {r['model']} | {r['acc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {diff} "
              f"| {r['params'] / 1e6:.1f} M ({r['params'] / ref['params']:.0%}) "
              f"| {r['macs_per_token'] / 1e6:.1f} M ({r['macs_per_token'] / ref['macs_per_token']:.0%}) | {timing} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    tmp.cleanup()
