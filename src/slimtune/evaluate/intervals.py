"""Bootstrap confidence intervals for accuracies, and paired differences between two models.

All intervals are 95% percentile bootstraps (by default) with a fixed seed, so the same scores
always give the same interval:
- `mean_ci`: the mean of per-example scores (1/0 correctness, or a scorer's value), resampling
  examples with replacement;
- `macro_ci`: a suite's average, the unweighted mean of its members' means, resampling within each
  member (stratified), so every resample keeps each member's size;
- `paired_ci`: the difference of two models on the same examples, resampling example indices
  jointly (the bootstrap of the per-example differences), within members when `groups` is given.
  Identical score vectors give a difference of exactly 0 and the interval [0, 0].

With `clusters` (a label per example: gsm_symbolic's template), whole clusters are resampled with
replacement and each resample's mean is its examples' mean (a cluster bootstrap): examples generated
from one template are not independent, and resampling them one by one would give too narrow an
interval.

Resample means are computed in chunks of indices (numpy, vectorised), so memory stays bounded for
large splits.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
_CHUNK = 4_000_000  # indices drawn per chunk (resamples x examples)


def _scores(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{what}: need a non-empty 1-D sequence of per-example scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{what}: per-example scores must be finite numbers")
    return arr


def _check(resamples: int, confidence: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ConfigError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")


def resample_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` means of `values` resampled with replacement (same size), one per row of indices."""
    n = values.size
    rows = max(1, _CHUNK // n)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def resample_cluster_means(values: np.ndarray, clusters: Sequence, resamples: int,
                           rng: np.random.Generator) -> np.ndarray:
    """`resamples` means of `values` over clusters resampled with replacement (as many as there are)."""
    if len(clusters) != values.size:
        raise ConfigError(f"{len(clusters)} cluster labels for {values.size} scores; give one label per example")
    labels = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.fromiter((labels[c] for c in clusters), dtype=np.int64, count=values.size)
    sums = np.bincount(index, weights=values, minlength=len(labels))
    counts = np.bincount(index, minlength=len(labels)).astype(np.float64)
    k = len(labels)
    rows = max(1, _CHUNK // k)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, k, size=(stop - start, k))
        out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def _resample(values: np.ndarray, clusters, resamples: int, rng: np.random.Generator) -> np.ndarray:
    if clusters is None:
        return resample_means(values, resamples, rng)
    return resample_cluster_means(values, clusters, resamples, rng)


def _interval(means: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return [float(lo), float(hi)]


def mean_ci(scores: Sequence[float], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
            seed: int = SEED, clusters: Sequence | None = None) -> dict:
    """{"mean", "ci": [lo, hi], "n"}: the mean of per-example scores and its percentile bootstrap interval
    (by cluster with `clusters`)."""
    _check(resamples, confidence)
    values = _scores(scores, "mean_ci")
    means = _resample(values, clusters, resamples, np.random.default_rng(seed))
    return {"mean": float(values.mean()), "ci": _interval(means, confidence), "n": int(values.size)}


def _indices(groups: Sequence[str], n: int, what: str) -> dict[str, list[int]]:
    if len(groups) != n:
        raise ConfigError(f"{what}: {len(groups)} group labels for {n} scores; give one label per example")
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def _by_group(scores: Sequence[float], groups: Sequence[str], what: str) -> dict[str, np.ndarray]:
    values = _scores(scores, what)
    return {g: values[idx] for g, idx in _indices(groups, values.size, what).items()}


def _macro(parts: Mapping[str, np.ndarray], resamples: int, confidence: float, seed: int,
           clusters: Mapping[str, Sequence] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    per_task, total = {}, np.zeros(resamples)
    for name, values in parts.items():
        means = _resample(values, (clusters or {}).get(name), resamples, rng)
        total += means
        per_task[name] = {"n": int(values.size), "mean": float(values.mean()), "ci": _interval(means, confidence)}
    average = float(np.mean([p["mean"] for p in per_task.values()]))
    return {"mean": average, "ci": _interval(total / len(parts), confidence), "per_task": per_task}


def macro_ci(groups: Mapping[str, Sequence[float]], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
             seed: int = SEED, clusters: Mapping[str, Sequence] | None = None) -> dict:
    """A suite's macro average: {"mean", "ci", "per_task": {member: {"n", "mean", "ci"}}}.

    `groups` maps each member to its per-example scores; every bootstrap resample draws each member's
    examples (or, with `clusters` {member: labels}, its clusters) from that member only (stratified) and averages the members' means with equal weight.
    A member's own interval here comes from the same resamples as the average, so it may differ in the
    last digits from `mean_ci` of that member alone.
    """
    _check(resamples, confidence)
    if not groups:
        raise ConfigError("macro_ci: no members to average")
    return _macro({k: _scores(v, f"macro_ci member {k}") for k, v in groups.items()}, resamples, confidence, seed,
                  clusters)


def paired_ci(a: Sequence[float], b: Sequence[float], groups: Sequence[str] | None = None,
              resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED,
              clusters: Sequence | None = None) -> dict:
    """The difference a - b of two models' mean scores on the SAME examples (in the same order), with a
    paired bootstrap interval: {"diff", "ci", "n", "excludes_zero"}; with `groups` (a member label per
    example) the difference of macro averages, resampled within members, plus "per_task" differences.

    excludes_zero says whether the interval lies strictly on one side of 0: a difference whose
    interval holds 0 is not a result. With `clusters`, whole clusters are resampled (within members).
    """
    _check(resamples, confidence)
    x, y = _scores(a, "paired_ci a"), _scores(b, "paired_ci b")
    if x.size != y.size:
        raise ConfigError(f"paired_ci: the two score vectors differ in length ({x.size} vs {y.size}); "
                          "a paired comparison needs both models scored on the same examples")
    diff = x - y
    if groups is None:
        r = mean_ci(diff, resamples, confidence, seed, clusters)
        out = {"diff": r["mean"], "ci": r["ci"], "n": r["n"]}
    else:
        where = _indices(groups, diff.size, "paired_ci")
        per_cluster = None if clusters is None else {g: [clusters[i] for i in idx] for g, idx in where.items()}
        r = _macro({g: diff[idx] for g, idx in where.items()}, resamples, confidence, seed, per_cluster)
        out = {"diff": r["mean"], "ci": r["ci"], "n": int(diff.size),
               "per_task": {k: {"n": v["n"], "diff": v["mean"], "ci": v["ci"],
                                "excludes_zero": bool(v["ci"][0] > 0 or v["ci"][1] < 0)}
                            for k, v in r["per_task"].items()}}
    out["excludes_zero"] = bool(out["ci"][0] > 0 or out["ci"][1] < 0)
    return out


def grouped(scores: Sequence[float], groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example scores split by member label (in first-seen order), for macro_ci."""
    return _by_group(scores, groups, "grouped")
