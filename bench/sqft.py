"""SQFT's comparison on the default model, held out, with intervals: which way of fine-tuning a sparse
(INT4) base gives an accurate model that is still sparse and still INT4?

    python bench/sqft.py                                 # suite:commonsense-evals, seeds 42,43,44, every method
    python bench/sqft.py --task suite:commonsense        # BIG-bench's suite (needs SLIMTUNE_BIGBENCH_DIR)
    python bench/sqft.py --task bigbench:social_iqa --seeds 42 --methods qa-float,lora-gptq --nls off
    python bench/sqft.py --task evals:quartz --methods qa-float,lora-gptq --nls on   # one member, QuaRTz
    python bench/sqft.py --methods none                  # the bases only (dense, Wanda 50%, sparse-INT4)
    python bench/sqft.py --keep /tmp/sqft                # keep the artifacts; a re-run reuses finished ones
    python bench/sqft.py --quick                         # tiny random Llama, a minute: a smoke test

Pipeline: the dense model is pruned 50% with Wanda (16 x 512 news tokens), and the sparse model is
quantized INT4 with GPTQ (same calibration). Then, per training seed, each method with a fixed-rank
adapter (rank = the median of the NLS space, so sizes are equal) and, with --nls, with an NLS
super-adapter (median sub-adapter, or --select), trained on the task's training split (for a suite:
its training mix) with the same schedule:
  lora          LoRA on the sparse-INT4 base, kept beside it (the model is base + adapter)
  lora-gptq     LoRA merged into the dequantized base (its zeros are filled) and the result
                re-quantized with GPTQ: the usual workaround
  sparsepeft    masked adapter on the sparse float base, merged: sparse, not INT4
  qa-float      QA-SparsePEFT on the sparse-INT4 base, W = the sparse float weights (SQFT's choice),
                merged onto the base's own grid: sparse and INT4
  qa-quantized  the same with W = the dequantized INT4 base
  adalora       AdaLoRA (masked, quantization-aware) on the sparse-INT4 base: init rank = the NLS maximum,
                target average rank = the fixed rank, merged onto the grid (no NLS variant)
  paca          PaCA on the sparse-INT4 base: as many input columns per module as the fixed-rank LoRA
                has parameters, trained in place (zeros kept), re-quantized onto the same grid at merge
                (no NLS variant)
Every model is scored on the same held-out test examples (split seed 0; the lineage check refuses
any overlap with training or selection). A row reports the accuracy averaged over seeds, its 95%
bootstrap interval (examples resampled, each example's score averaged over the seeds; for a suite
the macro average over members), the per-seed accuracies, Wikipedia perplexity, sparsity, bits and
size, and the intruder dimensions of each tuned model against the base it trained on (k 10, epsilon
0.5; total over the adapted matrices, mean over seeds) beside its perplexity drift. Paired differences on the same examples answer SQFT's questions: QA-SparsePEFT merged vs LoRA
merged + GPTQ, SparsePEFT merged vs LoRA unmerged, and every tuned model vs the sparse-INT4 base.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_result, pooled_result, score_with_ci, stage_runner  # noqa: E402
from baselines_step import MODES, QA, options as method_options  # noqa: E402


METHODS = ("lora", "lora-gptq", "sparsepeft", "qa-float", "qa-quantized", "adalora", "paca")
WITHOUT_NLS = ("adalora", "paca")  # their own way of choosing what trains: no elastic-rank variant
QUESTIONS = [("qa-float", "lora-gptq"), ("sparsepeft", "lora"), ("qa-float", "base:sparse-INT4 base (GPTQ)"),
             ("lora-gptq", "base:sparse-INT4 base (GPTQ)"), ("lora", "base:sparse-INT4 base (GPTQ)"),
             ("sparsepeft", "base:sparse-INT4 base (GPTQ)"), ("lora", "lora-gptq"), ("qa-float", "lora"),
             ("qa-float", "qa-quantized"),
             ("qa-float-nls", "adalora"), ("qa-float-nls", "paca"), ("qa-float", "adalora"), ("qa-float", "paca"),
             ("adalora", "base:sparse-INT4 base (GPTQ)"), ("paca", "base:sparse-INT4 base (GPTQ)")]
LABELS = {"lora": "LoRA (unmerged)", "lora-gptq": "LoRA merged + GPTQ", "sparsepeft": "SparsePEFT merged",
          "qa-float": "QA-SparsePEFT merged (W = float weights)",
          "qa-quantized": "QA-SparsePEFT merged (W = INT4 base)", "adalora": "AdaLoRA (QA, masked) merged",
          "paca": "PaCA merged onto the grid"}


def _with_nls(key: str) -> str:
    """The NLS variant's row key of a question's member (bases and methods without NLS stay)."""
    return key if key.startswith("base:") or key.endswith("-nls") or key in WITHOUT_NLS else f"{key}-nls"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="suite:commonsense-evals")
    ap.add_argument("--seeds", default="42,43,44", help="training seeds (the split seed is the task's: 0)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}, or none")
    ap.add_argument("--nls", default="both", choices=["off", "on", "both"], help="fixed-rank adapters, NLS, or both")
    ap.add_argument("--rank-space", default="32,24,16", help="NLS space; the fixed-rank adapters use its median")
    ap.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha (SQFT: 64 at r_max 32)")
    ap.add_argument("--select", default="median", help="NLS sub-adapter: maximal, median, minimal or nncf")
    ap.add_argument("--max-steps", type=int, default=300, help="optimizer steps of every fine-tuning run")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--limit", type=int, default=None, help="score the first N test examples (default: all)")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--sym", action="store_true", help="symmetric INT4 grid (default asymmetric)")
    ap.add_argument("--windows", type=int, default=4, help="perplexity windows of 512 tokens of the Wikipedia excerpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", default=None, help="artifact directory (default: a temp dir); finished artifacts are reused")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, short runs")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from slimtune import api
    from slimtune.artifacts import write_json_atomic
    from slimtune.errors import ArtifactError
    from slimtune.evaluate.compare import paired_difference
    from slimtune.models import build_tiny_model
    from slimtune.report import model_facts, size_mb

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    space = [int(r) for r in args.rank_space.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = [] if args.methods == "none" else args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)} or none")
    nls_modes = {"off": [False], "on": [True], "both": [False, True]}[args.nls]
    calibration = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0}
    train = dict(max_steps=args.max_steps, learning_rate=args.lr, batch_size=8, warmup_steps=10, max_length=128,
                 save_steps=1000, progress=False)
    evaluation = dict(limit=args.limit, perplexity_text="wiki", seq_len=512, max_windows=args.windows, progress=False)
    model = args.model
    if args.quick:
        model = str(build_tiny_model(work / "tiny")) if not (work / "tiny").exists() else str(work / "tiny")
        calibration = {"source": "news", "n_samples": 4, "seq_len": 64, "seed": 0}
        train.update(max_steps=4, max_length=64)
        evaluation.update(seq_len=64, max_windows=2, limit=args.limit or 40)
        space = [8, 6, 4]
    fixed_rank = space[(len(space) - 1) // 2]  # LoRA's, PaCA's and AdaLoRA's target rank (baselines_step.options)

    stage = stage_runner(work, [args.task])

    print(f"model {args.model}, task {args.task} (split seed 0), seeds {seeds}, methods {methods or 'none'}, NLS "
          f"{args.nls} {space} (fixed rank {fixed_rank}), alpha {args.alpha:g}, INT4 g{args.group_size} "
          f"{'sym' if args.sym else 'asym'}, {train['max_steps']} steps, lr {args.lr:g}", flush=True)
    quant = dict(method="gptq", bits=4, group_size=args.group_size, symmetric=args.sym, calibration=calibration,
                 progress=False)
    sparse = stage("sparse", lambda p: api.sparsify(model, out=p, method="wanda", sparsity=0.5,
                                                    calibration=calibration, progress=False))
    int4 = stage("sparse-int4", lambda p: api.quantize(sparse, out=p, **quant))

    def tune(name, base, seed, method, nls=False, **mode):
        """An adapter of `method` (bench/baselines_step.options) trained on `base`; NLS: its median sub-adapter."""
        kw = method_options("nls" if nls else method, space, train["max_steps"], args.alpha, **mode)
        sup = stage(name, lambda p: api.finetune(base, task=args.task, out=p, seed=seed, **kw, **train))
        if not nls:
            return sup
        return stage(name + "-sub", lambda p: api.extract(sup, out=p, select=args.select, progress=False))

    def scored(model_dir, adapter=None):
        """The evaluation of one model, cached beside its artifact under --keep (same task and settings)."""
        def timed():
            t0 = time.time()
            r = api.evaluate(model_dir, task=args.task, adapter=adapter, **evaluation)
            return {**r, "eval_s": round(time.time() - t0, 1)}

        return cached_result(work / f"{Path(adapter or model_dir).name}.eval.json" if args.keep else None,
                             {"task": args.task, **evaluation}, timed)

    def built(method, nls, seed):
        """(model dir, adapter or None, the base it trained on) of one method, trained with one seed."""
        tag = f"{method}{'-nls' if nls else ''}-s{seed}"
        if method in ("lora", "lora-gptq"):
            lora = tune(f"lora{'-nls' if nls else ''}-s{seed}", int4, seed, "lora", nls, dropout=0.0)
            if method == "lora":
                return int4, lora, int4
            merged = stage(f"lora-merged{'-nls' if nls else ''}-s{seed}", lambda p: api.merge(lora, out=p))
            return stage(tag, lambda p: api.quantize(merged, out=p, **quant)), None, int4
        if method == "sparsepeft":
            adapter = tune(tag + "-adapter", sparse, seed, "lora", nls, sparse_adapter=True)
            return stage(tag, lambda p: api.merge(adapter, out=p)), None, sparse
        if method in ("adalora", "paca"):
            adapter = tune(tag + "-adapter", int4, seed, method, **MODES[method])
        else:
            adapter = tune(tag + "-adapter", int4, seed, "lora", nls, **QA, qa_weights=method.split("-")[1])
        return stage(tag, lambda p: api.merge(adapter, out=p)), None, int4

    def intruders(base, model_dir, adapter):
        """Total intruder dimensions of a tuned model (or an adapter) against the base it trained on, cached."""
        tuned = Path(adapter or model_dir)
        cache = work / f"{tuned.name}.intruders.json"
        if cache.exists():
            return json.loads(cache.read_text())["total_intruders"]
        try:
            r = api.diagnose_intruders(base, **({"adapter": adapter} if adapter else {"tuned": model_dir}))
        except ArtifactError:  # the merge left every adapted matrix as it was (an update under half a grid step)
            r = {"total_intruders": 0, "unchanged": True}
        write_json_atomic(cache, {k: v for k, v in r.items() if k != "layers"})
        return r["total_intruders"]

    rows, results = [], {}

    base_ppl = {}

    def row(key, label, nls, runs, base=None):
        """runs: [(model dir, adapter, result)] over seeds; base: the model they trained on (tuned rows)."""
        pooled = pooled_result([r for _, _, r in runs])
        acc, ci = score_with_ci(pooled)
        model_dir, adapter, first = runs[0]
        facts = model_facts(model_dir)
        results[key] = pooled
        rows.append({"key": key, "method": label, "nls": nls, "acc": acc, "ci": ci,
                     "per_seed": [score_with_ci(r)[0] for _, _, r in runs], "ppl": first["perplexity"],
                     "sparsity": facts["sparsity"], "bits": facts["bits"],
                     "size_mb": facts["size_mb"] + (size_mb(Path(adapter)) if adapter else 0.0),
                     "eval_s": [r["eval_s"] for _, _, r in runs], "n": first["n"],
                     "drift": first["perplexity"] / base_ppl[str(base)] if base else None,
                     "intruders": (sum(intruders(base, m, a) for m, a, _ in runs) / len(runs)) if base else None})
        if base is None:
            base_ppl[str(model_dir)] = first["perplexity"]
        print(f"  {label}{' + NLS' if nls else ''}: acc {acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] per seed "
              f"{', '.join(format(a, '.3f') for a in rows[-1]['per_seed'])}, ppl {first['perplexity']:.2f}, "
              f"sparsity {facts['sparsity']:.3f}, bits {facts['bits']}, eval {first['eval_s']} s", flush=True)

    for label, path in (("dense base", model), ("sparse base (Wanda 50%)", sparse), ("sparse-INT4 base (GPTQ)", int4)):
        row(f"base:{label}", label, False, [(path, None, scored(path))])
    for nls in nls_modes:
        for method in methods:
            if nls and method in WITHOUT_NLS:
                continue
            runs = []
            for seed in seeds:
                model_dir, adapter, base = built(method, nls, seed)
                runs.append((model_dir, adapter, scored(model_dir, adapter)))
            row(f"{method}{'-nls' if nls else ''}", LABELS[method], nls, runs, base)

    what = "macro average over the suite's members" if args.task.startswith("suite:") else "accuracy"
    print(f"\n{args.task}: {what} on {rows[0]['n']} held-out test examples, mean over seeds {seeds} with its 95% "
          f"bootstrap interval; Wikipedia perplexity ({evaluation['max_windows']} x {evaluation['seq_len']} tokens, "
          "first seed); sparsity and bits of the decoder's linear layers; size: safetensors on disk (base + adapter "
          "where unmerged)\n")
    print("| method | NLS | test acc [95% CI] | per seed | wiki ppl | drift vs its base | intruders | sparsity | bits "
          "| size MB |")
    print("|---|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['method']} | {'yes' if r['nls'] else '-'} | {r['acc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] "
              f"| {', '.join(format(a, '.3f') for a in r['per_seed'])} | {r['ppl']:.2f} "
              f"| {'-' if r['drift'] is None else format(r['drift'], '.2f') + 'x'} "
              f"| {'-' if r['intruders'] is None else format(r['intruders'], '.1f')} | {r['sparsity']:.3f} "
              f"| {r['bits']} | {r['size_mb']:.1f} |")
    comparisons = []
    for ka, kb in dict.fromkeys(QUESTIONS + [tuple(map(_with_nls, q)) for q in QUESTIONS]):
        if ka != kb and ka in results and kb in results:
            d = paired_difference(results[ka], results[kb], results[ka].get("members"))
            comparisons.append({"a": ka, "b": kb, "diff": d["diff"], "ci": d["ci"], "excludes_zero": d["excludes_zero"]})
    if comparisons:
        print("\nPaired differences on the same examples (seed-averaged scores):\n")
        print("| A | B | A - B | 95% CI | a result? |")
        print("|---|---|---:|---|---|")
        for c in comparisons:
            print(f"| {c['a']} | {c['b']} | {c['diff']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
                  f"{'yes' if c['excludes_zero'] else 'no: the interval holds 0'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "comparisons": comparisons}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
