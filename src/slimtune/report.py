"""The report of a recipe run: report.md with tables and PNG plots, and metrics.json.

Built only from the artifacts in the run directory (so `slimtune report DIR` rebuilds it at any time):
the models' inspect summaries (sparsity, bits, size on disk, parameters, MACs per token), the evaluate stages' results, the
sub-adapters' ranks and the searches' Pareto fronts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .artifacts import MANIFEST, RECIPE_FILE, STATE_DIR, Artifact, write_json_atomic
from .errors import ArtifactError



def size_mb(directory: Path) -> float | None:
    """Size on disk of a directory's safetensors files (MB)."""
    if not directory.is_dir():
        return None
    return sum(f.stat().st_size for f in directory.rglob("*.safetensors")) / 2**20


def model_facts(path: str | Path) -> dict:
    """Sparsity and bits of the decoder's linear layers, safetensors size on disk, parameters and MACs per
    token (at 128 positions: nas/cost.py) of a model directory."""
    from .configs import InspectConfig
    from .models import resolve_model
    from .summary import model_costs, summarize

    directory = Path(resolve_model(str(path)))
    summary = summarize(directory)
    bits = sorted({m.get("bits", 16 if _is_half(directory) else 32) for m in summary["matrices"].values() if m["prunable"]})
    layers = {k: m["sparsity"] for k, m in summary["matrices"].items() if m["prunable"]}
    costs = model_costs(directory, InspectConfig()).get("costs") or {}
    return {"sparsity": summary["total"]["sparsity"], "bits": "/".join(map(str, bits)), "size_mb": size_mb(directory),
            "parameters": costs.get("parameters"), "macs_per_token": costs.get("macs_per_token"),
            "layer_sparsity": layers}


def _is_half(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("dtype") in ("float16", "bfloat16")
    except (OSError, ValueError):
        return False


def _stages(run_dir: Path) -> list[dict]:
    path = run_dir / STATE_DIR / RECIPE_FILE
    if not path.is_file():
        raise ArtifactError(f"{run_dir} is not a recipe run directory (no {STATE_DIR}/{RECIPE_FILE}); "
                            "run `slimtune run recipe.yaml --out DIR` first")
    return json.loads(path.read_text())["stages"]


def build_report(run_dir: str | Path) -> Path:
    """Write report.md, metrics.json and the PNG plots into run_dir; returns report.md's path."""
    run_dir = Path(run_dir)
    recipe = json.loads((run_dir / STATE_DIR / RECIPE_FILE).read_text()) if (run_dir / STATE_DIR / RECIPE_FILE).is_file() \
        else None
    stages = _stages(run_dir)
    done = [s for s in stages if (run_dir / s["name"] / MANIFEST).is_file()]
    metrics: dict = {"model": recipe["model"], "task": recipe["task"], "stages": {}, "models": {}}
    for s in done:
        artifact = Artifact.load(run_dir / s["name"])
        metrics["stages"][s["name"]] = {"stage": s["stage"], "method": artifact.method,
                                        "seconds": artifact.wall_time_s}
    # evaluated models: the evaluate stages' results, with the models' facts
    metrics["comparisons"] = []
    for s in (s for s in done if s["stage"] == "evaluate"):
        results = json.loads((run_dir / s["name"] / "results.json").read_text())
        for name, r in results.items():
            path = recipe["model"] if name == "model" else run_dir / name
            metrics["models"][name] = {**headline_accuracy(r), "perplexity": r.get("perplexity"),
                                       "task": r.get("task"), "split": r.get("split"), "n": r.get("n"),
                                       "split_seed": r.get("split_seed"),
                                       **{k: v for k, v in model_facts(path).items() if k != "layer_sparsity"}}
        metrics["comparisons"] += paired_comparisons(results)
    warnings = _add_drift(metrics["models"], {name: recipe["model"] if name == "model" else run_dir / name
                                              for name in metrics["models"]})
    plots = []
    if metrics["models"]:
        plots.append(("Accuracy and size per model", _plot_models(metrics["models"], run_dir / "models.png")))
    last_model = next((s for s in reversed(done) if s["stage"] in ("sparsify", "quantize", "merge")), None)
    if last_model:
        facts = model_facts(run_dir / last_model["name"])
        plots.append((f"Per-layer sparsity of {last_model['name']}",
                      _plot_layer_sparsity(facts["layer_sparsity"], last_model["name"], run_dir / "sparsity.png")))
    ranks_stage = next((s for s in reversed(done) if s["stage"] == "extract"  # a sub-adapter (not an EFTNAS model)
                        and (run_dir / s["name"] / "adapter_config.json").is_file()), None)
    if ranks_stage:
        artifact = Artifact.load(run_dir / ranks_stage["name"])
        metrics["chosen_ranks"] = artifact.config["ranks"]
        plots.append((f"Ranks chosen per layer ({ranks_stage['name']}: {artifact.method})",
                      _plot_ranks(run_dir / ranks_stage["name"], run_dir / "ranks.png")))
    for s in (s for s in done if s["stage"] == "search"):
        if (run_dir / s["name"] / "pareto.png").is_file():
            plots.append((f"Pareto front of search {s['name']}", f"{s['name']}/pareto.png"))
            metrics["stages"][s["name"]]["pareto"] = json.loads((run_dir / s["name"] / "pareto.json").read_text())["front"]
    write_json_atomic(run_dir / "metrics.json", metrics)
    lines = [f"# slimtune run: {run_dir.name}", "", f"Model `{recipe['model']}`, task `{recipe['task']}`.", "",
             "## Stages", "", "| # | stage | name | method | seconds |", "|---:|---|---|---|---:|"]
    for i, s in enumerate(stages):
        st = metrics["stages"].get(s["name"])
        lines.append(f"| {i + 1} | {s['stage']} | {s['name']} | {st['method'] if st else 'not run'} | "
                     f"{'' if not st or st['seconds'] is None else format(st['seconds'], '.0f')} |")
    if metrics["models"]:
        lines += ["", "## Models", "", format_models(metrics["models"])]
        lines += [f"\n**Warning** ({name}): {w}" for name, w in warnings]
    if metrics["comparisons"]:
        lines += ["", "## Paired differences (same test examples)", "", format_comparisons(metrics["comparisons"])]
    for title, png in plots:
        lines += ["", f"## {title}", "", f"![{title}]({png})"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def headline_accuracy(result: dict) -> dict:
    """{"accuracy", "accuracy_ci"} of an evaluate result: a suite's macro average, else acc (multiple
    choice) or accuracy (generation), with its 95% bootstrap interval."""
    key = "average" if "average" in result else "acc" if "acc" in result else "accuracy"
    return {"accuracy": result.get(key), "accuracy_ci": result.get(f"{key}_ci")}


def paired_comparisons(results: dict) -> list[dict]:
    """Each evaluated model against every model evaluated before it (in the demo: the sparse-INT4 base
    against the dense one, the final model against both), on the same examples: the paired
    difference of accuracy with its 95% bootstrap interval."""
    from .evaluate.compare import paired_difference

    scored = [(name, r) for name, r in results.items() if "scores" in r]
    out = []
    for i, (name, r) in enumerate(scored):
        for ref, earlier in scored[:i]:
            d = paired_difference(r, earlier, r.get("members"))
            out.append({"a": name, "b": ref, "diff": d["diff"], "ci": d["ci"], "excludes_zero": d["excludes_zero"]})
    return out


def _add_drift(models: dict, paths: dict) -> list[tuple[str, str]]:
    """Each merged model's perplexity over that of the evaluated model it was merged into (same
    text); returns the drift warnings."""
    from .evaluate.drift import drift, tuning_base

    resolved = {name: str(Path(p).resolve()) if Path(str(p)).exists() else str(p) for name, p in paths.items()}
    warnings = []
    for name, m in models.items():
        base = tuning_base(paths[name])
        base = str(Path(base).resolve()) if base is not None and Path(base).exists() else base
        ref = next((n for n, p in resolved.items() if p == base and n != name), None)
        if ref is None or m.get("perplexity") is None or models[ref].get("perplexity") is None:
            continue
        d = drift(m["perplexity"], models[ref]["perplexity"])
        m["perplexity_vs"] = {"model": ref, "ratio": d["perplexity_ratio"]}
        if "drift_warning" in d:
            warnings.append((name, d["drift_warning"]))
    return warnings


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _millions(v):
    return None if v is None else v / 1e6


def format_models(models: dict) -> str:
    rows = ["| model | accuracy [95% CI] | perplexity | perplexity vs its base | sparsity | bits | size on disk (MB) "
            "| parameters (M) | MACs per token (M) |",
            "|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for name, m in models.items():
        ci = m.get("accuracy_ci")
        acc = _fmt(m["accuracy"], ".3f") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        vs = m.get("perplexity_vs")
        vs_text = f"{vs['ratio']:.2f}x {vs['model']}" if vs else "-"
        rows.append(f"| {name} | {acc} | {_fmt(m['perplexity'], '.2f')} | {vs_text} | "
                    f"{_fmt(m['sparsity'], '.1%')} | {m['bits']} | {_fmt(m['size_mb'], '.1f')} | "
                    f"{_fmt(_millions(m.get('parameters')), '.3f')} | {_fmt(_millions(m.get('macs_per_token')), '.3f')} |")
    return "\n".join(rows)


def format_comparisons(comparisons: list[dict], labels: dict | None = None) -> str:
    labels = labels or {}
    rows = ["| model | vs | accuracy difference | 95% CI (paired bootstrap) | a result? |", "|---|---|---:|---|---|"]
    for c in comparisons:
        rows.append(f"| {labels.get(c['a'], c['a'])} | {labels.get(c['b'], c['b'])} | {c['diff']:+.3f} | "
                    f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
                    f"{'yes: the interval excludes 0' if c['excludes_zero'] else 'no: the interval holds 0'} |")
    return "\n".join(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def matplotlib_integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _plot_models(models: dict, path: Path) -> str:
    plt = _pyplot()
    names = list(models)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    acc = [models[n]["accuracy"] or 0.0 for n in names]
    a1.bar(names, acc, color="tab:blue")
    a1.set_ylim(0, 1)
    a1.set_ylabel("accuracy")
    for i, v in enumerate(acc):
        a1.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    size = [models[n]["size_mb"] or 0.0 for n in names]
    a2.bar(names, size, color="tab:orange")
    a2.set_ylabel("size on disk (MB)")
    for i, (v, n) in enumerate(zip(size, names)):
        a2.text(i, v, f"{v:.1f} MB\n{models[n]['sparsity']:.0%} zero, {models[n]['bits']} bit", ha="center",
                va="bottom", fontsize=7)
    a2.set_ylim(0, max(size + [1.0]) * 1.3)
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _plot_layer_sparsity(layers: dict[str, float], name: str, path: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=120)
    kinds = sorted({k.rsplit(".", 2)[-2] for k in layers})
    for kind in kinds:
        pts = [(int(m.group(1)), v) for k, v in layers.items() if k.rsplit(".", 2)[-2] == kind
               and (m := re.search(r"\.(\d+)\.", k))]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, "o-", ms=3, label=kind)
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(matplotlib_integer_ticks())
    ax.set_ylabel("fraction of zero weights")
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: per-layer sparsity", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _plot_ranks(adapter_dir: Path, path: Path) -> str:
    from .summary import summarize

    ranks = summarize(adapter_dir)["ranks"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=120)
    kinds = sorted({k.rsplit(".", 1)[-1] for k in ranks})
    width = 0.8 / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        pts = [(int(m.group(1)), r) for k, r in ranks.items() if k.rsplit(".", 1)[-1] == kind
               and (m := re.search(r"\.(\d+)\.", k))]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.bar([x + (j - (len(kinds) - 1) / 2) * width for x in xs], ys, width=width, label=kind)
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(matplotlib_integer_ticks())
    ax.set_ylabel("rank")
    ax.set_ylim(0, max(ranks.values()) * 1.35)
    ax.set_title("sub-adapter ranks per layer", fontsize=10)
    ax.legend(fontsize=7, ncol=len(kinds), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
