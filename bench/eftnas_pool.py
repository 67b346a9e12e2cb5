"""bench/eftnas.py's cached evaluations of several runs (one --keep directory per training seed), pooled:
each test example's score averaged over the runs, then EFTNAS minus the teacher and each baseline ((a), (a'),
(a''), (b)) at each extracted budget, paired on the same examples with 95% bootstrap intervals.

    python bench/eftnas_pool.py --task evals:sarcasm /work/eft-sarcasm2/keep /work/eft-sarcasm-s43/keep ...
    python bench/eftnas_pool.py --task bbc-news --sampler budgets RUN ...   # the runs' --sampler budgets models,
                                        # and EFTNAS with it against EFTNAS with the sandwich rule where both ran

Every run must have scored the same test examples (same --test-limit, split seed 0); runs whose cached
evaluations were made with other settings are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import pooled_cache, score_with_ci  # noqa: E402

MODELS = {"teacher": "teacher (full fine-tune)", "eftnas": "EFTNAS (supernet + search)",
          "magft": "(a) magnitude-pruned + fine-tuned", "magown": "(a') magnitude-pruned, own widths, + fine-tuned",
          "magownkd": "(a'') magnitude-pruned, own widths, + distilled",
          "lonas": "(b) LoNAS end-dropping supernet"}
PICKS = ("0.5", "0.25")


def main() -> None:
    from slimtune.evaluate.compare import paired_difference

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="the task the runs were made on (one of their --tasks)")
    ap.add_argument("--sampler", choices=["sandwich", "budgets"], default="sandwich",
                    help="the super-networks' sampling rule of the runs to pool (bench/eftnas.py --sampler)")
    ap.add_argument("runs", nargs="+", help="bench/eftnas.py --keep directories, one per seed")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs]
    v = "" if args.sampler == "sandwich" else f"+{args.sampler}"  # as bench/eftnas.py names the stages
    names = ["teacher"] + [f"{m}{'' if m.startswith('magown') else v}-{b}" for b in PICKS
                           for m in ("eftnas", "magft", "magown", "magownkd", "lonas")]
    if v:  # EFTNAS with the sandwich rule, to compare the samplers
        names += [f"eftnas-{b}" for b in PICKS]
    paths = {n: [r / f"{args.task.replace(':', '_')}__{n}.eval.json" for r in runs] for n in names}
    older = [n for n in names if (n.startswith("magown") or v and n.startswith("eftnas-"))
             and not all(p.is_file() for p in paths[n])]
    if older:  # runs made before baselines (a') / (a'') existed, or without the sandwich super-network
        print(f"left out, not in every run: {', '.join(older)}; re-run the bench with the same --keep to add them")
        names = [n for n in names if n not in older]
    pooled = {n: pooled_cache(paths[n]) for n in names}
    print(f"{args.task}: {len(runs)} runs pooled ({', '.join(map(str, runs))}), n = {len(pooled['teacher']['scores'])}")
    print("\n| model | budget | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | pooled [95% CI] |")
    print("|---|---:|" + "---:|" * len(runs) + "---|")
    for n in names:
        kind, _, budget = n.partition("-")
        kind, _, rule = kind.partition("+")
        label = MODELS[kind] + (f", {rule}" if rule else ", sandwich" if v and kind in ("eftnas", "lonas") else "")
        per_run = " | ".join(f"{score_with_ci(pooled_cache([p]))[0]:.3f}" for p in paths[n])
        acc, ci = score_with_ci(pooled[n])
        print(f"| {label} | {budget or 1} | {per_run} | {acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |")
    print(f"\n| budget | EFTNAS{v} − | pooled difference | 95% CI | a result? |\n|---:|---|---:|---|---|")
    for b in PICKS:
        others = ("teacher", f"magft{v}-{b}", f"magown-{b}", f"magownkd-{b}", f"lonas{v}-{b}",
                  *([f"eftnas-{b}"] if v else []))
        for other in (o for o in others if o in names):
            d = paired_difference(pooled[f"eftnas{v}-{b}"], pooled[other])
            kind = other.partition("-")[0].partition("+")[0]
            label = "EFTNAS, sandwich" if v and other.startswith("eftnas-") else MODELS[kind]
            print(f"| {b} | {label} | {d['diff']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
                  f"| {'yes' if d['excludes_zero'] else 'no: the interval holds 0'} |")


if __name__ == "__main__":
    main()
