"""SVD-truncated adapters vs NLS sub-adapters of the same size (issue 19, item 4).

    python bench/svd_vs_nls.py --super-adapter RUN/super --model BASE      # an existing NLS super-adapter
    python bench/svd_vs_nls.py                                             # trains one on polarity first
    python bench/svd_vs_nls.py --quick                                     # tiny random Llama, under a minute
    python bench/svd_vs_nls.py --pool RUN42,RUN43,RUN44                    # earlier --keep runs, one per seed, pooled

From one NLS super-adapter: its maximal, median and minimal sub-adapters (`slimtune extract`), and at
each of their adapter-parameter counts two SVD re-factorizations of the maximal adapter (`slimtune
refactor`): `svd-uniform` (the same uniform rank, so exactly the same count) and `svd-budget` (per-module
ranks allocated greedily by singular-value energy per parameter, within the same count). All are scored
on the same examples of the task's held-out split (test by default; the lineage check refuses examples
the super-adapter trained on), with 95% bootstrap intervals and each SVD variant's paired difference from
the NLS sub-adapter of its size. Prints a table and draws accuracy vs adapter parameters in the style of
the search's Pareto plot (pareto.png). Each evaluation is cached beside its adapter (ADAPTER.eval.json, with
its per-example scores); --pool reads those of several run directories (one super-adapter per seed, the
same examples) and reports each example's score averaged over the runs, with the pooled intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HEURISTICS = ("maximal", "median", "minimal")


def _evaluate(api, model, task, adapter, split, limit) -> dict:
    """The adapter's evaluation (per-example scores included, so seeds can be pooled later), cached beside it."""
    from _common import cached_result

    return cached_result(Path(f"{adapter}.eval.json"), {"model": str(model), "task": task, "split": split,
                                                         "limit": limit},
                         lambda: api.evaluate(model, task=task, adapter=adapter, split=split, limit=limit,
                                              progress=False))


def _uniform_rank(config: dict) -> int | None:
    ranks = set(config.values())
    return ranks.pop() if len(ranks) == 1 else None


def plot(rows: list[dict], path, title: str) -> None:
    """Accuracy vs adapter parameters (millions): NLS sub-adapters as a line with their labels, SVD variants
    as markers, intervals as error bars (the search's pareto.png style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"nls": ("-o", "tab:blue"), "svd-uniform": ("s", "tab:orange"), "svd-budget": ("^", "tab:green")}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, (marker, color) in styles.items():
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params"])
        if not pts:
            continue
        xs, ys = [r["params"] / 1e6 for r in pts], [r["acc"] for r in pts]
        err = [[r["acc"] - (r["ci"] or [r["acc"]] * 2)[0] for r in pts], [(r["ci"] or [r["acc"]] * 2)[1] - r["acc"]
                                                                          for r in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, ms=5, capsize=3, label=method, alpha=0.9)
        if method == "nls":
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color="tab:red")
    ax.set_xlabel("params (millions)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _variants(work: Path, size: str) -> dict[str, Path]:
    """The adapters of one size in a run directory: the NLS sub-adapter and the SVD variants present."""
    names = {"nls": f"nls-{size}", "svd-uniform": f"svd-uniform-{size}", "svd-budget": f"svd-budget-{size}"}
    return {m: work / n for m, n in names.items() if (work / n).exists()}


def run(args, work: Path) -> tuple[dict, str, str, str]:
    """Extract, refactor and score one super-adapter's sizes: ({(method, size): (result, adapter)}, task, model,
    super-adapter)."""
    from slimtune import api
    from slimtune.adapters.peft_io import base_of_adapter
    from slimtune.artifacts import Artifact
    from slimtune.models import build_tiny_model

    train = dict(epochs=4.0, learning_rate=5e-4, batch_size=8, warmup_steps=5, max_length=128, seed=42, progress=False)
    space = [32, 24, 16]
    if args.quick:
        args.model = str(work / "tiny") if (work / "tiny").exists() else str(build_tiny_model(work / "tiny"))
        train.update(epochs=None, max_steps=6, learning_rate=2e-2, warmup_steps=0, max_length=64)
        train = {k: v for k, v in train.items() if v is not None}
        space = [8, 6, 4]
        args.limit = args.limit or 24
    sup = Path(args.super_adapter) if args.super_adapter else work / "super"
    if not sup.exists():
        task = args.task or "polarity"
        print(f"training an NLS super-adapter ({','.join(map(str, space))}, shears groups) on {task} -> {sup}", flush=True)
        api.finetune(args.model or "smollm2-135m", task=task, out=sup, adapter="nls", rank_space=space,
                     alpha=2.0 * space[0], dropout=0.0, **train)
    model = args.model or base_of_adapter(sup)
    task = args.task or (Artifact.find(sup).task if Artifact.find(sup) else None) or "polarity"
    results = {}
    for size in args.sizes.split(","):
        sub = work / f"nls-{size}"
        if not sub.exists():
            api.extract(sup, out=sub, select=size, model=model, progress=False)
        manifest = Artifact.load(sub)
        uniform = _uniform_rank(manifest.config["ranks"])
        if uniform is not None and not (work / f"svd-uniform-{size}").exists():
            api.refactor(sup, out=work / f"svd-uniform-{size}", rank=uniform, model=model)
        if not (work / f"svd-budget-{size}").exists():
            api.refactor(sup, out=work / f"svd-budget-{size}", budget=manifest.metrics["adapter_parameters"], model=model)
        for method, adapter in _variants(work, size).items():
            results[(method, size)] = (_evaluate(api, model, task, adapter, args.split, args.limit), adapter)
            print(f"{size:>8} {method:<12} scored", flush=True)
    return results, task, str(model), str(sup)


def pooled(dirs: list[Path], sizes: list[str]) -> dict:
    """{(method, size): (result, adapter)} of several run directories (one per seed) from their cached
    evaluations: per example the mean score over the directories (same examples), adapters from the first."""
    from _common import pooled_cache

    return {(method, size): (pooled_cache([d / f"{adapter.name}.eval.json" for d in dirs]), adapter)
            for size in sizes for method, adapter in _variants(dirs[0], size).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--super-adapter", help="an NLS super-adapter (default: train one on --task)")
    ap.add_argument("--model", default=None, help="its base model (default: the one it records; smollm2-135m to train)")
    ap.add_argument("--task", default=None, help="task (default: the super-adapter's training task, else polarity)")
    ap.add_argument("--split", default="test", choices=["validation", "test"], help="held-out split scored (default test)")
    ap.add_argument("--limit", type=int, default=None, help="score the first N examples of the split (default: all)")
    ap.add_argument("--keep", help="run directory (default: a temp dir); finished parts are reused")
    ap.add_argument("--pool", help="comma-separated run directories of earlier --keep runs (one per seed): report "
                                   "their cached evaluations pooled, each example's score averaged over the runs")
    ap.add_argument("--sizes", default=",".join(HEURISTICS), help="comma-separated sub-adapter sizes to compare "
                                                                  f"(default {','.join(HEURISTICS)})")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, a few training steps (a smoke test)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--plot", help="accuracy vs adapter parameters PNG (default: svd_vs_nls.png in the run directory; pooled: svd_vs_nls-pooled.png in the first)")
    args = ap.parse_args(argv)
    if not set(args.sizes.split(",")) <= set(HEURISTICS):
        raise SystemExit(f"--sizes {args.sizes!r}: choose among {', '.join(HEURISTICS)}")

    from _common import score_with_ci
    from slimtune import api
    from slimtune.artifacts import Artifact
    from slimtune.evaluate.compare import paired_difference

    tmp = tempfile.TemporaryDirectory()
    if args.pool:
        dirs = [Path(d) for d in args.pool.split(",")]
        results, work = pooled(dirs, args.sizes.split(",")), dirs[0]
        first = next(iter(results.values()))[0]
        task, model, sup = first["task"], first["model"], f"{len(dirs)} runs pooled: {args.pool}"
        args.split = first["split"]
    else:
        work = Path(args.keep) if args.keep else Path(tmp.name)
        work.mkdir(parents=True, exist_ok=True)
        results, task, model, sup = run(args, work)
    rows = []
    for (method, size), (result, adapter) in results.items():
        n_params = Artifact.load(adapter).metrics["adapter_parameters"]
        acc, ci = (score_with_ci(result) if args.pool else  # a pooled result's interval, from its scores
                   (api.task_score(result), result.get(f"{'acc' if 'acc' in result else 'accuracy'}_ci")))
        row = {"method": method, "size": size, "params": n_params, "acc": acc, "ci": ci, "adapter": str(adapter)}
        if method != "nls":
            d = paired_difference(result, results[("nls", size)][0])
            row["minus_nls"] = {"diff": d["diff"], "ci": d["ci"], "excludes_zero": d["excludes_zero"]}
        rows.append(row)

    n = next(iter(results.values()))[0]["n"]
    print(f"\n{task}, {args.split} split, n = {n}; super-adapter {sup} on {model}")
    print("| size | method | adapter params | accuracy [95% CI] | minus NLS [95% CI] |")
    print("|---|---|---:|---|---|")
    for r in rows:
        ci = f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else ""
        diff = (f"{r['minus_nls']['diff']:+.3f} [{r['minus_nls']['ci'][0]:+.3f}, {r['minus_nls']['ci'][1]:+.3f}]"
                if "minus_nls" in r else "")
        print(f"| {r['size']} | {r['method']} | {r['params']:,} | {r['acc']:.3f}{ci} | {diff} |")
    path = Path(args.plot) if args.plot else work / f"svd_vs_nls{'-pooled' if args.pool else ''}.png"
    plot(rows, path, f"SVD truncation vs NLS sub-adapters: {task} {args.split} (n = {n})")
    print(f"plot: {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": task, "split": args.split, "n": n, "model": str(model),
                                               "super_adapter": str(sup), "rows": rows}, indent=2))
    if not args.keep and not args.pool:
        print("(run directory removed; pass --keep DIR to keep the adapters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
