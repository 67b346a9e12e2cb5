"""Paired comparison of two evaluate_model results on the same examples, and its table."""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from .intervals import paired_ci


def headline(result: dict) -> str:
    """The key of a result's headline accuracy: acc (multiple choice) or accuracy (generation)."""
    return "acc" if "acc" in result else "accuracy"


def paired_difference(a: dict, b: dict, members: list[str] | None = None, order: Sequence[str] = ()) -> dict:
    """A - B on the headline metric, from two results that carry per-example ids and scores.

    With `members` (one member label per example, a suite's) the difference is that of the macro
    averages, resampled within members, with "per_task" differences (in `order`'s order first);
    otherwise of the plain means. Results that carry `clusters` (gsm_symbolic's templates) are
    resampled by cluster.
    """
    for name, r in (("A", a), ("B", b)):
        if "scores" not in r or "ids" not in r:
            raise ConfigError(f"result {name} has no per-example ids and scores; evaluate a task (not only perplexity)")
    if a["ids"] != b["ids"]:
        raise ConfigError(f"results A and B were scored on different examples ({len(a['ids'])} vs {len(b['ids'])}, "
                          "or in another order); a paired comparison needs the same task, split, split seed and limit")
    d = paired_ci(a["scores"], b["scores"], groups=members, clusters=a.get("clusters"))
    if "per_task" in d:
        keys = [m for m in order if m in d["per_task"]] + [m for m in d["per_task"] if m not in order]
        d["per_task"] = {m: d["per_task"][m] for m in keys}
    return d


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def format_comparison(result: dict) -> str:
    """A short text table: each model's accuracy with its interval, and the paired difference."""
    a, b, d, metric = result["a"], result["b"], result["difference"], result["metric"]
    label = lambda r: r["model"] + (f" + {r['adapter']}" if r.get("adapter") else "")  # noqa: E731
    lines = [f"task {result['task']} ({result['split']} split, split seed {result['split_seed']}), "
             f"{result['n']} examples, metric {metric} (95% bootstrap intervals)"]
    if "per_task" in d:
        lines.append(f"{'member':<44} {'n':>5} {'A':>7} {'B':>7} {'A - B':>7}  interval")
        for m, diff in d["per_task"].items():
            lines.append(f"{m:<44} {diff['n']:>5} {a['per_task'][m]['acc']:>7.3f} {b['per_task'][m]['acc']:>7.3f} "
                         f"{diff['diff']:>+7.3f}  {_ci(diff['ci'])}{' *' if diff['excludes_zero'] else ''}")
        lines.append(f"{'average (macro)':<44} {result['n']:>5} {a['average']:>7.3f} {b['average']:>7.3f} "
                     f"{d['diff']:>+7.3f}  {_ci(d['ci'])}{' *' if d['excludes_zero'] else ''}")
    else:
        for name, r in (("A", a), ("B", b)):
            lo, hi = r[f"{metric}_ci"]
            lines.append(f"{name}: {r[metric]:.3f} [{lo:.3f}, {hi:.3f}]  {label(r)}")
        lines.append(f"A - B: {d['diff']:+.3f} {_ci(d['ci'])}")
    lines.append("A and B differ: the interval excludes 0" if d["excludes_zero"] else
                 "no significant difference: the interval holds 0")
    if "per_task" in d:
        lines += [f"A: {label(a)}", f"B: {label(b)}", "* interval excludes 0"]
    return "\n".join(lines)
