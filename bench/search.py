"""Sub-adapter search vs heuristics at equal evaluation budget, on the default model and a real task.

    python bench/search.py                                   # trains an NLS super-adapter on polarity first
    python bench/search.py --super-adapter /tmp/sqft-run/qa-quantized-nls   # e.g. bench/sqft.py's QA-SparsePEFT+NLS
    python bench/search.py --quick                           # tiny random Llama, a minute

Three ways of spending N validation evaluations on one super-adapter (same validation slice):
  heuristics  NNCF's candidates (median, most frequently sampled, the 5 lowest-loss training
              configurations) plus maximal and minimal: at most 9 evaluations, whatever N is
  random      N uniformly random configurations (optuna's RandomSampler; heuristics first)
  nsga2       N trials of NSGA-II (heuristics first)
For each: the Pareto front (validation accuracy vs adapter parameters), whether a configuration
dominates the median heuristic (at least as accurate and smaller, or more accurate and no larger),
and by how much. The median and each method's knee are then scored on the held-out TEST split
(split seed 0, which the training and the search never saw: the lineage check refuses otherwise),
with the knee's paired difference from the median and its 95% bootstrap interval. Overhead: per trial, the time not spent in the validation forward
passes (sampling, switching ranks, recording) as a fraction of the trial time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def _dominates_median(records, median):
    """Records that dominate the median configuration; (best accuracy gain at <= its size, smallest size at >= its accuracy)."""
    m_acc, m_size = median["objectives"]["accuracy"], median["objectives"]["params"]
    dom = [r for r in records if (r["objectives"]["accuracy"] >= m_acc and r["objectives"]["params"] < m_size)
           or (r["objectives"]["accuracy"] > m_acc and r["objectives"]["params"] <= m_size)]
    gain = max((r["objectives"]["accuracy"] - m_acc for r in records if r["objectives"]["params"] <= m_size), default=0.0)
    smaller = [r["objectives"]["params"] / m_size for r in records if r["objectives"]["accuracy"] >= m_acc]
    return dom, gain, min(smaller, default=1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--super-adapter", help="an NLS super-adapter (default: train one on --task)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="polarity")
    ap.add_argument("--trials", type=int, default=24, help="evaluation budget N of random and nsga2")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (the task's split seed is its own: 0)")
    ap.add_argument("--limit", type=int, default=None, help="validation examples every trial scores (default: all)")
    ap.add_argument("--test-limit", type=int, default=None, help="held-out test examples scored (default: all)")
    ap.add_argument("--keep", help="run directory (default: a temp dir); finished parts are reused")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    from slimtune import api
    from slimtune.artifacts import Artifact
    from slimtune.models import build_tiny_model
    from slimtune.nas import ElasticSpace, nncf_candidates

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model, train = args.model, dict(epochs=4.0, learning_rate=5e-4, batch_size=8, warmup_steps=5, max_length=128,
                                    seed=42, progress=False)
    if args.quick:
        model = str(work / "tiny") if (work / "tiny").exists() else str(build_tiny_model(work / "tiny"))
        train.update(epochs=1.0, max_length=64)
        args.trials, args.population = min(args.trials, 8), 4
    sup = Path(args.super_adapter) if args.super_adapter else work / "super"
    if not sup.exists():
        print(f"training an NLS super-adapter (32,24,16, shears groups) on {args.task} -> {sup}", flush=True)
        api.finetune(model, task=args.task, out=sup, adapter="nls", rank_space=[32, 24, 16], alpha=64.0, **train)
    space = ElasticSpace.load(sup)
    history = json.loads((sup / "elastic_history.json").read_text())
    print(f"super-adapter {sup}: {len(space.groups)} rank groups; budget N = {args.trials}", flush=True)

    results = {}
    for sampler in ("random", "nsga2"):
        out = work / f"search-{sampler}"
        api.search(sup, out=out, task=args.task, trials=args.trials, sampler=sampler, population=args.population,
                   seed=args.seed, limit=args.limit, progress=False)
        results[sampler] = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    # The heuristics: NNCF's candidates + maximal + minimal, evaluated as the (only) trials of one more run.
    heur = dict(maximal=space.maximal(), minimal=space.minimal(), **dict(nncf_candidates(space, history)))
    distinct = {json.dumps(c, sort_keys=True) for c in heur.values()}
    out = work / "search-heuristics"
    api.search(sup, out=out, task=args.task, trials=len(distinct), sampler="random", seed=args.seed,
               limit=args.limit, enqueue=heur, progress=False)
    scored = {json.dumps(r["config"], sort_keys=True): r
              for r in (json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines())}
    results["heuristics"] = [{**scored[json.dumps(c, sort_keys=True)], "heuristic": label} for label, c in heur.items()
                             if json.dumps(c, sort_keys=True) in scored]
    heuristic_records = results["heuristics"]

    base = Artifact.load(sup).config["model"]
    median = next(r for r in heuristic_records if r["heuristic"] == "median")
    from slimtune.nas.search import knee, pareto_front

    objectives = ["accuracy", "params"]
    rows = []
    for name, records in results.items():
        front = pareto_front(records, objectives)
        dom, gain, smaller = _dominates_median(records, median)
        overhead = [1 - r["eval_s"] / r["trial_s"] for r in records if r.get("eval_s") and r.get("trial_s")]
        k = knee(front, objectives)
        rows.append({"method": name, "evaluations": len(records), "front": len(front), "dominating_median": len(dom),
                     "acc_gain_at_median_size": gain, "size_ratio_at_median_acc": smaller,
                     "best_val_acc": max(r["objectives"]["accuracy"] for r in records), "knee": k,
                     "overhead_median": statistics.median(overhead) if overhead else None})
    # test accuracy of the median and of each method's knee (never seen by the search)
    from slimtune.evaluate.compare import paired_difference

    med_sub = work / "median"
    if not med_sub.exists():
        api.extract(sup, out=med_sub, select="median", progress=False)
    median_result = api.evaluate(base, task=args.task, adapter=med_sub, limit=args.test_limit, progress=False)
    median_test = api.task_score(median_result)
    for row in rows:
        sub = work / f"knee-{row['method']}"
        if not sub.exists():  # from the search run, so the knee's lineage records the examples that chose it
            api.extract(out=sub, from_search=work / f"search-{row['method']}", pick=f"trial={row['knee']['trial']}",
                        progress=False)
        knee_result = api.evaluate(base, task=args.task, adapter=sub, limit=args.test_limit, progress=False)
        row["knee_test_acc"] = api.task_score(knee_result)
        d = paired_difference(knee_result, median_result)
        row["knee_minus_median"] = {"diff": d["diff"], "ci": d["ci"], "excludes_zero": d["excludes_zero"]}

    m = median["objectives"]
    lo, hi = median_result.get("acc_ci", median_result.get("accuracy_ci"))
    print(f"\nmedian heuristic: validation acc {m['accuracy']:.3f}, {m['params'] / 1e6:.3f} M adapter params, "
          f"test acc {median_test:.3f} [{lo:.3f}, {hi:.3f}] on {median_result['n']} held-out examples\n")
    print("| method | evaluations | front size | configs dominating the median | acc gain at <= median size "
          "| size at >= median acc | best val acc | knee (val acc, M params) | knee test acc | knee - median (test) "
          "[95% CI] | overhead per trial |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for r in rows:
        k = r["knee"]["objectives"]
        print(f"| {r['method']} | {r['evaluations']} | {r['front']} | {r['dominating_median']} "
              f"| {r['acc_gain_at_median_size']:+.3f} | {r['size_ratio_at_median_acc']:.2f}x "
              f"| {r['best_val_acc']:.3f} | {k['accuracy']:.3f}, {k['params'] / 1e6:.3f} "
              f"| {'-' if r['knee_test_acc'] is None else format(r['knee_test_acc'], '.3f')} "
              f"| {r['knee_minus_median']['diff']:+.3f} [{r['knee_minus_median']['ci'][0]:+.3f}, "
              f"{r['knee_minus_median']['ci'][1]:+.3f}] "
              f"| {'-' if r['overhead_median'] is None else format(r['overhead_median'], '.1%')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "median_test": median_test, "rows": rows}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
