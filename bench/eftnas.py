"""EFTNAS on an encoder (issue 17): MiniLM-L6 fine-tuned per task (the teacher), compressed to 50% and 25%
of its MACs, against four baselines at the same MACs, held out, with intervals.

    python bench/eftnas.py                                   # minilm-l6 on sarcasm (evals data)
    python bench/eftnas.py --tasks bbc-news --max-length 32 --supernet-steps 300   # BBC News headlines, 5 topics
    python bench/eftnas.py --tasks evals:pararule-plus --max-length 256 --supernet-steps 300 --test-limit 500
    python bench/eftnas.py --tasks bigbench:hyperbaton,bigbench:strategyqa   # needs SLIMTUNE_BIGBENCH_DIR
    python bench/eftnas.py --tasks bigbench:strategyqa --supernet-steps 300 --trials 24
    python bench/eftnas.py --keep /tmp/eftnas --json r.json  # keep the artifacts; a re-run reuses finished ones
    python bench/eftnas.py --keep /tmp/eftnas --sampler budgets  # both super-networks with the budgets rule; in
                             # the same --keep, the stages that do not depend on the sampler are reused
    python bench/eftnas.py --quick                           # tiny random BERT on polarity, about a minute

Per task (split seed 0; every model is scored on the same held-out test examples, and the lineage check
refuses any overlap with training or selection):
  teacher        full fine-tune of the encoder with a new head (--teacher-steps, lr 5e-5)
  EFTNAS         importance (first-order -W dL/dW, summed over the teacher's fine-tuning steps; with
                 --importance passes, over --importance-limit training examples of the fine-tuned
                 teacher: the importance stage, markedly worse here, see RESULTS.md) -> space
                 (MAC budgets --budgets, each met within 1%, model reordered by importance) -> supernet
                 (sandwich: maximal, random, minimal widths per step, or --sampler budgets: the middle one of
                 the space's 50% and 75% budgets' widths; 0.1 CE + 0.9 T^2 KL from the teacher,
                 T = 2; --supernet-steps) -> search (NSGA-II, validation accuracy vs MACs, --trials on
                 --search-limit validation examples; the space's budget widths are first trials) ->
                 extract --pick budget=F for F in 0.5, 0.25
  magnitude-FT   baseline (a): the teacher's heads / neurons ranked by weight L2 norm (LoNAS' magnitude
                 order), cut to the same per-layer widths as the EFTNAS sub-network of that budget, then
                 fully fine-tuned on the task with cross-entropy (no distillation) for --supernet-steps steps
  magnitude-own  baseline (a'): as (a), but with the per-layer widths that the magnitude scores themselves give
                 each budget (the space stage's threshold bisection on weight norms), so neither EFTNAS'
                 importance nor its search chooses them: magnitude pruning + fine-tuning on its own
  magnitude-own-KD  baseline (a''): (a')'s cut, fine-tuned with EFTNAS' distillation from the teacher instead
                 (0.1 CE + 0.9 T^2 KL, T = 2; finetune --teacher): prune, then distil
  LoNAS-ends     baseline (b): no importance and no reordering, uniform widths: every layer keeps its first
                 round(F x heads) heads and the first MLP neurons that bring the MACs to F (within 1%); a
                 super-network over {full, 0.75, 0.5, 0.25} trained exactly as EFTNAS' (sandwich +
                 distillation, same steps), the budget configuration extracted directly (no search: its
                 space has one configuration per budget)
  also, untrained: the importance-pruned teacher (EFTNAS' space sliced at the chosen widths, before any
                 super-network training) and the magnitude-pruned teacher (before its fine-tune)
Reported: test accuracy with its 95% bootstrap interval, MACs per token (linear layers + attention products
at 128 tokens, as the space counts them) and parameters; paired differences on the same examples of each
EFTNAS sub-network against the teacher and both baselines at its budget; the space's budget errors; a
plot of accuracy vs MACs (--plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_result, stage_runner  # noqa: E402

TASKS = "evals:sarcasm"  # crepe: every model, teacher included, predicts its 76% majority (RESULTS.md)
PICKS = (0.5, 0.25)
ROWS = [("teacher", "teacher (full fine-tune)"), ("eftnas", "EFTNAS (supernet + search)"),
        ("magft", "(a) magnitude-pruned + fine-tuned"),
        ("magown", "(a') magnitude-pruned, own widths, + fine-tuned"),
        ("magownkd", "(a'') magnitude-pruned, own widths, + distilled"), ("lonas", "(b) LoNAS end-dropping supernet"),
        ("imp0", "importance-pruned, untrained"), ("mag0", "magnitude-pruned, untrained")]


def _manifest(path) -> dict:
    return json.loads((Path(path) / "slimtune.json").read_text())


def magnitude_importance(teacher, out: Path) -> Path:
    """importance.json whose scores are the units' weight norms (nas.reorder.magnitude_scores): the space stage
    then reorders the teacher by magnitude instead of first-order importance."""
    from slimtune.models import load_model
    from slimtune.nas.importance import Importance, dimension_kind, structure_dimensions
    from slimtune.nas.reorder import magnitude_scores

    net, _ = load_model(teacher)
    dims = structure_dimensions(net)
    Importance({d.name: magnitude_scores(net, d) for d in dims}, {d.name: dimension_kind(d) for d in dims}, 0,
               "magnitude: L2 norm of each unit's weights").save(out)
    return out


def uniform_widths(net, fractions, seq_len: int) -> dict[float, dict[str, int]]:
    """LoNAS-style uniform widths per budget: round(F x heads) heads in every layer, then the MLP width (the
    same in every layer) whose MACs come closest to F of the full model's."""
    from slimtune.nas.budgets import cost_model
    from slimtune.nas.importance import dimension_kind, structure_dimensions

    dims = structure_dimensions(net)
    costs = cost_model(net, dims, "macs", seq_len)
    out = {}
    for f in fractions:
        widths = {d.name: max(1, round(f * d.choices[0])) for d in dims if dimension_kind(d) == "heads"}
        mlp = [d for d in dims if dimension_kind(d) == "mlp"]
        rest = f * costs.total - costs.cost({**widths, **{d.name: 0 for d in mlp}})
        m = max(1, round(rest / sum(costs.per_unit[d.name] for d in mlp)))
        widths.update({d.name: min(m, d.choices[0]) for d in mlp})
        out[f] = widths
    return out


def relative_error(net, widths: dict[str, int], fraction: float, seq_len: int) -> float:
    from slimtune.nas.budgets import cost_model
    from slimtune.nas.importance import structure_dimensions

    costs = cost_model(net, structure_dimensions(net), "macs", seq_len)
    return costs.cost(widths) / (fraction * costs.total) - 1


def budget_widths(path: Path) -> dict[float, dict[str, int]]:
    """The widths a space stage chose for each of its budgets (fraction -> widths)."""
    from slimtune.nas.elastic_model import SPACE_FILE

    return {b["fraction"]: b["widths"] for b in json.loads((Path(path) / SPACE_FILE).read_text())["budgets"]}


def with_space(path: Path, widths_per_budget: dict[float, dict[str, int]]) -> None:
    """Replace an elastic model's search space (and its budget record) by one whose choices per dimension are
    the full width and the given budgets' widths."""
    from slimtune.models import load_model
    from slimtune.nas.elastic_model import SPACE_FILE
    from slimtune.nas.importance import space_from_widths, structure_dimensions

    net, _ = load_model(path)
    full = {d.name: d.choices[0] for d in structure_dimensions(net)}
    space = space_from_widths(net, {n: sorted({w, *(b[n] for b in widths_per_budget.values())}, reverse=True)
                                    for n, w in full.items()})
    space.save(path)
    record = json.loads((path / SPACE_FILE).read_text())
    record["budgets"] = [{"fraction": f, "widths": w} for f, w in sorted(widths_per_budget.items(), reverse=True)]
    record["space"] = {n: d.choices for n, d in space.dimensions.items()}
    (path / SPACE_FILE).write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--tasks", default=TASKS, help="comma-separated classification tasks")
    ap.add_argument("--budgets", default="0.25,0.5,0.75,1.0", help="the space's MAC budgets (must hold 0.5 and 0.25)")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--supernet-steps", type=int, default=120, help="steps of each super-network and of baseline (a)'s "
                                                                      "fine-tune")
    ap.add_argument("--sampler", choices=["sandwich", "budgets"], default="sandwich",
                    help="both super-networks' sampling rule (supernet --sampler); budgets names its stages X+budgets")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--importance", choices=["finetune", "passes"], default="finetune",
                    help="first-order scores summed over the teacher's fine-tuning steps (finetune --importance, EFTNAS' "
                         "way) or from passes over the fine-tuned teacher (the importance stage); use another --keep")
    ap.add_argument("--importance-limit", type=int, default=256, help="training examples of the importance passes")
    ap.add_argument("--trials", type=int, default=16, help="search trials (NSGA-II)")
    ap.add_argument("--search-limit", type=int, default=1000,
                    help="validation examples each search trial scores (with 200, noise let two of three seeds pick "
                         "a 25%%-MACs model for the 50%% budget)")
    ap.add_argument("--test-limit", type=int, default=600, help="score the first N test examples (same for all)")
    ap.add_argument("--seed", type=int, default=42, help="training seed (the split seed is the task's: 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", default=None, help="artifact directory (default: a temp dir); finished artifacts are reused")
    ap.add_argument("--plot", default=None, help="accuracy vs MACs PNG (default: <keep or temp>/eftnas.png)")
    ap.add_argument("--quick", action="store_true", help="tiny random BERT on polarity, short runs")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from slimtune import api
    from slimtune.evaluate.compare import paired_difference
    from slimtune.evaluate.intervals import mean_ci
    from slimtune.models import build_tiny_model, load_model

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model, tasks = args.model, args.tasks.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    if not set(PICKS) <= set(budgets):
        raise SystemExit(f"--budgets must hold {PICKS} (the extracted sub-networks' budgets)")
    if args.quick:
        model = str(build_tiny_model(work / "tiny", arch="bert", seed=0)) if not (work / "tiny").exists() \
            else str(work / "tiny")
        tasks = ["polarity"]
        args.teacher_steps, args.supernet_steps, args.batch_size, args.max_length = 6, 4, 8, 48
        args.importance_limit, args.trials, args.search_limit = 32, 8, 16
    train = dict(learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length, warmup_steps=10,
                 save_steps=100000, logging_steps=50, seed=args.seed, progress=False)
    seq_len = 128  # the MACs' attention products (the space stage's default)

    stage = stage_runner(work, tasks)
    v = "" if args.sampler == "sandwich" else f"+{args.sampler}"  # on the stages that depend on the sampler

    def scored(path, task):
        """The held-out evaluation of one model, cached beside its artifact."""
        return cached_result(work / f"{Path(path).relative_to(work).as_posix().replace('/', '__')}.eval.json",
                             {"task": task, "limit": args.test_limit},
                             lambda: api.evaluate(path, task=task, split="test", limit=args.test_limit, progress=False))

    print(f"model {args.model if not args.quick else 'tiny BERT'}, tasks {tasks} (split seed 0), budgets {budgets}, "
          f"teacher {args.teacher_steps} steps, supernets ({args.sampler}) / fine-tunes {args.supernet_steps} steps, "
          f"batch {args.batch_size}, max length {args.max_length}, importance {args.importance}, search {args.trials} trials x {args.search_limit} "
          f"validation examples, test limit {args.test_limit}, threads {args.threads}", flush=True)
    all_rows, all_comparisons, all_spaces = [], [], []
    for task in tasks:
        t_start = time.time()
        d = task.replace(":", "_")
        print(f"\n{task}", flush=True)
        during = args.importance == "finetune"
        teacher = stage(f"{d}/teacher", lambda p: api.finetune(
            model, out=p, task=task, adapter="full", max_steps=args.teacher_steps, importance=during, **train))
        imp = teacher if during else stage(f"{d}/importance", lambda p: api.importance(
            teacher, out=p, task=task, limit=args.importance_limit, batch_size=args.batch_size,
            max_length=args.max_length, progress=False))
        space = stage(f"{d}/space", lambda p: api.space(teacher, out=p, importance=imp, budgets=budgets,
                                                         metric="macs", seq_len=seq_len))
        space_metrics = _manifest(space)["metrics"]
        for b in space_metrics["budgets"]:
            all_spaces.append({"task": task, "space": "EFTNAS (importance)", "fraction": b["fraction"],
                               "relative_error": b["relative_error"]})
        supernet = stage(f"{d}/supernet{v}", lambda p: api.supernet(space, out=p, task=task, sampler=args.sampler,
                                                                    max_steps=args.supernet_steps, **train))
        search = stage(f"{d}/search{v}", lambda p: api.search(supernet, out=p, objectives=["accuracy", "macs"],
                                                           trials=args.trials, limit=args.search_limit,
                                                           progress=False))
        models = {("teacher", 1.0): teacher}
        chosen = {}
        for f in PICKS:
            sub = stage(f"{d}/eftnas{v}-{f}", lambda p: api.extract(out=p, from_search=search, pick=f"budget={f}"))
            models[("eftnas", f)] = sub
            chosen[f] = _manifest(sub)["config"]["widths"]
            models[("imp0", f)] = stage(f"{d}/imp0{v}-{f}", lambda p: api.extract(space, out=p, select=chosen[f]))
        # (a) magnitude order, the same widths, fine-tuned
        mag_imp = stage(f"{d}/magnitude-importance", lambda p: (p.mkdir(parents=True), magnitude_importance(teacher, p)))

        def mag_space(p):
            api.space(teacher, out=p, importance=mag_imp, budgets=budgets, metric="macs", seq_len=seq_len)
            with_space(p, chosen)

        mspace = stage(f"{d}/magnitude-space{v}", mag_space)
        for f in PICKS:
            cut = stage(f"{d}/mag0{v}-{f}", lambda p: api.extract(mspace, out=p, select=chosen[f]))
            models[("mag0", f)] = cut
            models[("magft", f)] = stage(f"{d}/magft{v}-{f}", lambda p: api.finetune(
                cut, out=p, task=task, adapter="full", max_steps=args.supernet_steps, **train))
        # (a') magnitude order and the widths its own space gives each budget (no EFTNAS search), fine-tuned
        own_space = stage(f"{d}/magnitude-own-space", lambda p: api.space(
            teacher, out=p, importance=mag_imp, budgets=budgets, metric="macs", seq_len=seq_len))
        own, own_cuts = budget_widths(own_space), {}
        for f in PICKS:
            cut = own_cuts[f] = stage(f"{d}/magown0-{f}", lambda p: api.extract(own_space, out=p, select=own[f]))
            models[("magown", f)] = stage(f"{d}/magown-{f}", lambda p: api.finetune(
                cut, out=p, task=task, adapter="full", max_steps=args.supernet_steps, **train))
            models[("magownkd", f)] = stage(f"{d}/magownkd-{f}", lambda p: api.finetune(
                cut, out=p, task=task, adapter="full", max_steps=args.supernet_steps, distill={"teacher": str(teacher)},
                **train))
        # (b) LoNAS-style: first channels / heads, uniform widths, the same super-network training
        teacher_net, _ = load_model(teacher)
        uniform = uniform_widths(teacher_net, [f for f in budgets if f < 1], seq_len)
        for f, w in uniform.items():
            all_spaces.append({"task": task, "space": "LoNAS uniform (first units)", "fraction": f,
                               "relative_error": relative_error(teacher_net, w, f, seq_len)})
        del teacher_net

        def lonas_space(p):
            api.space(teacher, out=p, importance=imp, budgets=budgets, metric="macs", seq_len=seq_len, reorder=False)
            with_space(p, uniform)

        lspace = stage(f"{d}/lonas-space", lonas_space)
        lsuper = stage(f"{d}/lonas-supernet{v}", lambda p: api.supernet(
            lspace, out=p, task=task, teacher=teacher, sampler=args.sampler, max_steps=args.supernet_steps, **train))
        for f in PICKS:
            models[("lonas", f)] = stage(f"{d}/lonas{v}-{f}", lambda p: api.extract(lsuper, out=p, select=uniform[f]))

        results = {}
        for (kind, f), path in models.items():
            t0 = time.time()
            r = scored(path, task)
            results[(kind, f)] = r
            cuts = {"magft": models.get(("mag0", f)), "magown": own_cuts.get(f), "magownkd": own_cuts.get(f)}
            source = cuts.get(kind) or path
            facts = _manifest(source)["metrics"]
            ci = mean_ci(r["scores"])
            full_macs = _manifest(models[("eftnas", PICKS[0])])["metrics"]["full_macs"]
            macs = facts.get("macs", full_macs)
            params = sum(p.numel() for p in load_model(path)[0].parameters())
            all_rows.append({"task": task, "kind": kind, "label": dict(ROWS)[kind], "budget": f, "acc": ci["mean"],
                             "ci": ci["ci"], "n": r["n"], "macs": macs, "macs_fraction": macs / full_macs,
                             "params": params})
            print(f"  {kind} {f:g}: acc {ci['mean']:.3f} [{ci['ci'][0]:.3f}, {ci['ci'][1]:.3f}] on {r['n']}, MACs "
                  f"{macs / full_macs:.3f}, params {params:,} ({time.time() - t0:.0f} s)", flush=True)
        for f in PICKS:
            for kind in ("teacher", "magft", "magown", "magownkd", "lonas", "imp0"):
                other = results[(kind, 1.0 if kind == "teacher" else f)]
                dif = paired_difference(results[("eftnas", f)], other)
                all_comparisons.append({"task": task, "budget": f, "a": "eftnas", "b": kind, "diff": dif["diff"],
                                        "ci": dif["ci"], "excludes_zero": dif["excludes_zero"]})
            for kind in ("magft", "magown", "magownkd", "lonas"):
                dif = paired_difference(results[(kind, f)], results[("teacher", 1.0)])
                all_comparisons.append({"task": task, "budget": f, "a": kind, "b": "teacher", "diff": dif["diff"],
                                        "ci": dif["ci"], "excludes_zero": dif["excludes_zero"]})
        print(f"  {task}: {time.time() - t_start:.0f} s in all", flush=True)

    print("\nSearch-space budgets (MACs per token at 128 tokens; target: within 1%):\n")
    print("| task | space | budget | relative error | within 1% |")
    print("|---|---|---:|---:|---|")
    for s in all_spaces:
        print(f"| {s['task']} | {s['space']} | {s['fraction']:.2f} | {s['relative_error']:+.3%} | "
              f"{'yes' if abs(s['relative_error']) <= 0.01 else 'NO'} |")
    print(f"\nHeld-out test accuracy (split seed 0, first {args.test_limit} test examples) with 95% bootstrap "
          "intervals; MACs per token (linear + attention at 128 tokens) as a fraction of the teacher's; parameters "
          "of the model as loaded (embeddings included)\n")
    print("| task | model | budget | test acc [95% CI] | n | MACs | params |")
    print("|---|---|---:|---|---:|---:|---:|")
    order = [k for k, _ in ROWS]
    for r in sorted(all_rows, key=lambda r: (tasks.index(r["task"]), -r["budget"], order.index(r["kind"]))):
        print(f"| {r['task']} | {r['label']} | {r['budget']:g} | {r['acc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] "
              f"| {r['n']} | {r['macs_fraction']:.3f} | {r['params'] / 1e6:.2f}M |")
    print("\nPaired differences on the same test examples (A - B, 95% bootstrap interval):\n")
    print("| task | budget | A | B | A - B | 95% CI | a result? |")
    print("|---|---:|---|---|---:|---|---|")
    for c in all_comparisons:
        print(f"| {c['task']} | {c['budget']:g} | {dict(ROWS)[c['a']]} | {dict(ROWS)[c['b']]} | {c['diff']:+.3f} | "
              f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | {'yes' if c['excludes_zero'] else 'no: the interval holds 0'} |")
    plot = Path(args.plot) if args.plot else work / "eftnas.png"
    draw(all_rows, plot)
    print(f"\nplot: {plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "spaces": all_spaces, "rows": all_rows,
                                               "comparisons": all_comparisons}, indent=1))
    tmp.cleanup()
    return 0


def draw(rows: list[dict], path: Path) -> None:
    """Accuracy vs MACs fraction, one panel per task, 95% intervals as error bars (the rows of one budget drawn
    side by side; the teacher's accuracy as a dotted line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    style = {"teacher": ("k", "*"), "eftnas": ("C0", "o"), "magft": ("C1", "s"), "magown": ("C3", "D"),
             "magownkd": ("C4", "P"), "lonas": ("C2", "^"), "imp0": ("C0", "x"), "mag0": ("C1", "x")}
    for ax, task in zip(axes[0], tasks):
        teacher = [r for r in rows if r["task"] == task and r["kind"] == "teacher"]
        if teacher:
            ax.axhline(teacher[0]["acc"], color="k", linestyle=":", linewidth=0.8)
        for i, (kind, label) in enumerate(ROWS):
            pts = sorted((r for r in rows if r["task"] == task and r["kind"] == kind), key=lambda r: r["macs_fraction"])
            if not pts:
                continue
            x = [r["macs_fraction"] + (0.006 * (i - len(ROWS) / 2) if kind != "teacher" else 0) for r in pts]  # apart
            y = [r["acc"] for r in pts]
            err = [[r["acc"] - r["ci"][0] for r in pts], [r["ci"][1] - r["acc"] for r in pts]]
            color, marker = style[kind]
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, capsize=3, label=label,
                        linestyle="--" if kind in ("imp0", "mag0") else "-", alpha=0.6 if kind in ("imp0", "mag0") else 1)
        ax.set_title(task)
        ax.set_xlabel("MACs per token, fraction of the teacher's")
        ax.set_ylabel("held-out test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
