"""Multiple-choice evaluation speed: packed scoring vs the forward floor vs one forward per pair,
and what an INT4 (QuantLinear) model pays at evaluation time.

    python bench/evaluate.py                              # default model; socialiqa + polarity, 100 examples
    python bench/evaluate.py --tasks bigbench:strategyqa polarity   # the earlier default (needs BIG-bench's files)
    python bench/evaluate.py --quick                      # tiny random Llama, seconds
    python bench/evaluate.py --suite suite:commonsense-evals --dense DIR --int4 DIR   # time a whole suite

Per task (the test split's first --limit examples, tokenized once, as lm-eval does):
  packed    slimtune's scorer: one row per example (prompt once, then every choice; 4D mask,
            restarted position ids, LM head only at scored positions), rows sorted by length
  floor     a plain forward of exactly the same rows in the same batches (same ids, padded
            widths and batch sizes), with the 2D padding mask and logits for one position: the
            least any scorer feeding these tokens can pay. Goal: packed >= 0.8x floor's tokens/s
  pairs     the previous scorer: one sequence per (prompt, choice), longest first, batch_size pairs
--end-to-end also times multiple_choice itself (tokenization included) with both scorers.
Tokens/s counts the tokens fed (no padding), so packed and floor share a count and pairs feeds
more (each choice repeats the prompt); the speed-up is pairs' seconds / packed's seconds for the
same log-likelihoods (their largest difference is printed). Each measurement is repeated
--repeats times in rotating order and the fastest kept (the machine is shared).

INT4: the same model quantized in memory (RTN, 4 bits, group 64; or --int4 DIR, loaded as
QuantLinear). Counts QuantLinear dequantizations during two evaluations (the weight cache should
fill once, then stay), and times the packed batches on the dense and INT4 models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_TASKS = ["evals:socialiqa", "polarity"]


def _batches(plan, batch_size):
    """The packed rows in the order and batches packed_loglikelihoods uses."""
    from slimtune.evaluate.packed import pack_row

    rows = sorted((pack_row(k, ctx, conts) for k, (ctx, conts) in enumerate(plan.groups)), key=lambda r: -len(r.ids))
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _floor(model, tokenizer, batches):
    """Plain forwards of the same rows: right-padded ids, 2D mask, logits for the last position only."""
    import torch

    from slimtune.evaluate._common import pad_id, right_pad

    with torch.inference_mode():
        for batch in batches:
            ids, mask = right_pad([r.ids for r in batch], pad_id(tokenizer))
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_task(model, tokenizer, spec, args):
    import numpy as np

    from slimtune.data import load_task
    from slimtune.evaluate.choice import _pair_loglikelihoods, multiple_choice, plan_scoring
    from slimtune.evaluate.packed import packed_loglikelihoods

    examples = load_task(spec).test[:args.limit]
    t_tok, plan = _timed(lambda: plan_scoring(model, tokenizer, examples, args.max_length))
    if plan.pairs:
        print(f"  note: {len(set(k for k, _ in plan.pairs))} example(s) not packable (truncation/model); "
              "they are left out of the packed/floor timing", flush=True)
    pair_enc = [(ctx, cont) for ctx, conts in plan.groups for cont in conts]
    batches = _batches(plan, args.batch_size)
    fed_packed = sum(len(r.ids) for b in batches for r in b)
    padded = sum(len(b) * len(b[0].ids) for b in batches)
    fed_pairs = sum(len(ctx) + len(cont) - 1 for ctx, cont in pair_enc)
    runs = {
        "floor": lambda: _floor(model, tokenizer, batches),
        "packed": lambda: packed_loglikelihoods(model, tokenizer, plan.groups, args.batch_size, progress=False),
        "pairs": lambda: _pair_loglikelihoods(model, tokenizer, pair_enc, args.batch_size, 10 ** 9, progress=False),
    }
    best, outs = {k: float("inf") for k in runs}, {}
    names = list(runs)
    _floor(model, tokenizer, batches[:1])  # warm-up (allocator, kernels)
    for rep in range(args.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            sec, outs[name] = _timed(runs[name])
            best[name] = min(best[name], sec)
    packed = np.concatenate(outs["packed"])
    diff = float(np.abs(packed - np.array(outs["pairs"])).max())
    res = {
        "task": spec, "examples": len(examples), "packed_examples": len(plan.packed),
        "choices": sum(len(c) for _, c in plan.groups), "batches": len(batches), "batch_size": args.batch_size,
        "tokens_packed": fed_packed, "tokens_padded": padded, "tokens_pairs": fed_pairs,
        "tokenize_s": t_tok, "floor_s": best["floor"], "packed_s": best["packed"], "pairs_s": best["pairs"],
        "floor_tok_s": fed_packed / best["floor"], "packed_tok_s": fed_packed / best["packed"],
        "pairs_tok_s": fed_pairs / best["pairs"], "packed_vs_floor": best["floor"] / best["packed"],
        "speedup_vs_pairs": best["pairs"] / best["packed"], "max_abs_ll_diff": diff,
    }
    if args.end_to_end:  # multiple_choice itself, tokenization included, both scorers
        t_new, r_new = _timed(lambda: multiple_choice(model, tokenizer, examples, args.batch_size, progress=False,
                                                      max_length=args.max_length))
        t_old, r_old = _timed(lambda: multiple_choice(model, tokenizer, examples, args.batch_size, progress=False,
                                                      max_length=args.max_length, packed=False))
        res |= {"end_to_end_new_s": t_new, "end_to_end_old_s": t_old, "end_to_end_speedup": t_old / t_new,
                "acc": r_new["acc"], "acc_norm": r_new["acc_norm"],
                "same_predictions": r_new["predictions"] == r_old["predictions"]
                and r_new["predictions_norm"] == r_old["predictions_norm"]}
    print(f"  {spec}: packed {res['packed_tok_s']:.0f} tok/s = {res['packed_vs_floor']:.2f}x floor "
          f"({res['floor_tok_s']:.0f} tok/s); pairs {res['pairs_tok_s']:.0f} tok/s; speed-up "
          f"{res['speedup_vs_pairs']:.2f}x; tokenization {t_tok:.2f} s; max |dll| {diff:.2e}"
          + (f"; end to end {res['end_to_end_speedup']:.2f}x" if args.end_to_end else ""), flush=True)
    return res


def bench_int4(dense, tokenizer, args, spec):
    """Dequantizations per evaluation and forward time of the INT4 model vs the dense one."""
    from slimtune.data import load_task
    from slimtune.evaluate.choice import multiple_choice, plan_scoring
    from slimtune.models import load_model
    from slimtune.quant import QuantLinear, quant_linears, quantize_model

    if args.int4:
        q, _ = load_model(args.int4)
        source = args.int4
    else:
        q, _ = load_model(args.model_path)
        start = time.perf_counter()
        quantize_model(q, tokenizer, "rtn", 4, 64, True, progress=False)
        source = f"RTN int4 g64 sym in memory ({time.perf_counter() - start:.1f} s)"
    q.eval()
    layers = quant_linears(q)
    calls = [0]
    original = QuantLinear.dequantized_weight

    def counting(self):
        calls[0] += 1
        return original(self)

    examples = load_task(spec).test[:args.limit]
    batches = _batches(plan_scoring(q, tokenizer, examples, args.max_length), args.batch_size)[:args.int4_batches]
    QuantLinear.dequantized_weight = counting
    try:
        for m in layers.values():
            m.clear_cache()
        counts, evals = [], []
        for _ in range(2):
            calls[0] = 0
            sec, _ = _timed(lambda: multiple_choice(q, tokenizer, examples, args.batch_size, progress=False,
                                                    max_length=args.max_length))
            counts.append(calls[0])
            evals.append(sec)
        calls[0] = 0
        fill_s, _ = _timed(lambda: [m.dequantized_weight() for m in layers.values()])
    finally:
        QuantLinear.dequantized_weight = original
    best = {"dense": float("inf"), "int4": float("inf")}
    _floor(dense, tokenizer, batches[:1])  # warm-up (the INT4 model is warm from the evaluations)
    for rep in range(args.repeats + 1):
        for name, model in (("dense", dense), ("int4", q))[::1 if rep % 2 == 0 else -1]:
            sec, _ = _timed(lambda: _floor(model, tokenizer, batches))
            best[name] = min(best[name], sec)
    cache_mb = sum(m._cache[1].numel() * m._cache[1].element_size() for m in layers.values() if m._cache) / 2 ** 20
    packed_mb = sum(m.storage_bytes() for m in layers.values()) / 2 ** 20
    res = {"source": source, "quant_layers": len(layers), "dequantizations_first_eval": counts[0],
           "dequantizations_second_eval": counts[1], "first_eval_s": evals[0], "second_eval_s": evals[1],
           "dequantize_all_layers_s": fill_s, "batches_timed": len(batches),
           "dense_forward_s": best["dense"], "int4_forward_s": best["int4"],
           "int4_vs_dense": best["int4"] / best["dense"], "cache_mb": cache_mb, "packed_mb": packed_mb}
    print(f"  int4 ({source}): {len(layers)} QuantLinear; dequantizations {counts[0]} in the first evaluation, "
          f"{counts[1]} in the second; forward {res['int4_vs_dense']:.2f}x dense; re-dequantizing every layer "
          f"costs {fill_s:.2f} s (a forward of {len(batches)} batches: {best['int4']:.2f} s); "
          f"cache {cache_mb:.0f} MB fp32 next to {packed_mb:.0f} MB packed", flush=True)
    return res


def bench_suite(args):
    """Wall time of a whole suite (one Task whose examples carry their member) on each given model."""
    from slimtune.data import load_task
    from slimtune.evaluate import evaluate_model

    from _common import load_for_eval

    task = load_task(args.suite)
    out = {}
    for label, path in (("dense", args.dense), ("int4", args.int4)):
        if not path:
            continue
        model, tok = load_for_eval(path, args)
        sec, r = _timed(lambda: evaluate_model(model, tok, task=task, split="test", batch_size=args.batch_size,
                                               progress=False))
        out[label] = {"path": path, "n": r["n"], "average": r["average"], "average_ci": r["average_ci"],
                      "per_task": r["per_task"], "seconds": sec}
        print(f"  {label}: {r['n']} examples, macro average {r['average']:.3f} [{r['average_ci'][0]:.3f}, "
              f"{r['average_ci'][1]:.3f}], whole suite {sec:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model spec for slimtune.models.load_model")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=100, help="test examples per task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=None, help="default: the model's context")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--end-to-end", action="store_true", help="also time multiple_choice itself, both scorers")
    ap.add_argument("--int4", default=None, help="an INT4 (pack-quantized) model directory; default: RTN in memory")
    ap.add_argument("--int4-batches", type=int, default=4, help="packed batches timed on dense vs INT4")
    ap.add_argument("--no-int4", action="store_true")
    ap.add_argument("--suite", default=None, help="time a whole suite (e.g. suite:commonsense) on --dense/--int4")
    ap.add_argument("--dense", default=None, help="dense model directory for --suite")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, few examples")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from slimtune.models import build_tiny_model, resolve_model

    from _common import load_for_eval

    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        args.model = str(build_tiny_model(Path(tmp.name) / "tiny"))
        args.limit, args.repeats = min(args.limit, 16), 1
    results = {"model": args.model, "torch": torch.__version__, "threads": args.threads}
    if args.suite:
        if not (args.dense or args.int4):
            raise SystemExit("--suite needs --dense DIR and/or --int4 DIR")
        results["suite"] = bench_suite(args)
    else:
        args.model_path = str(resolve_model(args.model))
        model, tok = load_for_eval(args.model_path, args)
        print(f"{args.model}: {model.config._attn_implementation} attention, batch {args.batch_size}, "
              f"{args.threads} threads", flush=True)
        results["tasks"] = [bench_task(model, tok, spec, args) for spec in args.tasks]
        if not args.no_int4:
            results["int4"] = bench_int4(model, tok, args, args.tasks[0])
        _print_table(results["tasks"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _print_table(rows):
    print("\n| task | examples | choices | tokens fed (packed / pairs) | floor tok/s | packed tok/s | packed / floor "
          "| pairs tok/s | speed-up vs pairs | max abs dll |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['examples']} | {r['choices']} | {r['tokens_packed']} / {r['tokens_pairs']} "
              f"| {r['floor_tok_s']:.0f} | {r['packed_tok_s']:.0f} | {r['packed_vs_floor']:.2f} "
              f"| {r['pairs_tok_s']:.0f} | {r['speedup_vs_pairs']:.2f}x | {r['max_abs_ll_diff']:.1e} |")


if __name__ == "__main__":
    sys.exit(main())
