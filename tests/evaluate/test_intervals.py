"""Bootstrap intervals: known cases, the 1/sqrt(n) law, the normal approximation, paired differences."""

import math

import numpy as np
import pytest

from slimtune.errors import ConfigError
from slimtune.evaluate.intervals import grouped, macro_ci, mean_ci, paired_ci


def _bernoulli(n, p, seed=1):
    # exactly round(n * p) ones in a fixed shuffled order, so the mean is known
    k = int(round(n * p))
    values = np.array([1.0] * k + [0.0] * (n - k))
    np.random.default_rng(seed).shuffle(values)
    return values


def test_constant_scores_give_a_point_interval():
    assert mean_ci([1.0] * 37) == {"mean": 1.0, "ci": [1.0, 1.0], "n": 37}
    assert mean_ci([0] * 5)["ci"] == [0.0, 0.0]
    assert macro_ci({"a": [1] * 4, "b": [1] * 9}) == {
        "mean": 1.0, "ci": [1.0, 1.0],
        "per_task": {"a": {"n": 4, "mean": 1.0, "ci": [1.0, 1.0]}, "b": {"n": 9, "mean": 1.0, "ci": [1.0, 1.0]}}}


def test_deterministic_and_contains_the_mean():
    s = _bernoulli(200, 0.6)
    a, b = mean_ci(s), mean_ci(s)
    assert a == b and a["mean"] == pytest.approx(0.6)
    assert a["ci"][0] < 0.6 < a["ci"][1]
    assert mean_ci(s, seed=5)["ci"] != a["ci"]  # the seed is the only source of variation


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_matches_the_normal_approximation_for_large_n(p):
    n = 4000
    r = mean_ci(_bernoulli(n, p))
    half = 1.959964 * math.sqrt(p * (1 - p) / n)
    assert r["ci"][0] == pytest.approx(p - half, abs=0.15 * half)
    assert r["ci"][1] == pytest.approx(p + half, abs=0.15 * half)


def test_width_shrinks_as_one_over_sqrt_n():
    widths = {n: np.diff(mean_ci(_bernoulli(n, 0.5))["ci"])[0] for n in (100, 400, 1600)}
    assert widths[100] / widths[400] == pytest.approx(2.0, rel=0.15)
    assert widths[400] / widths[1600] == pytest.approx(2.0, rel=0.15)


def test_macro_average_is_unweighted_and_stratified():
    parts = {"big": _bernoulli(900, 0.9), "small": _bernoulli(100, 0.5)}
    r = macro_ci(parts)
    assert r["mean"] == pytest.approx(0.7)  # (0.9 + 0.5) / 2, not the pooled 0.86
    # stratified: the variance is the average of the members' variances / 2^2
    half = 1.959964 * math.sqrt(0.9 * 0.1 / 900 + 0.5 * 0.5 / 100) / 2
    assert r["ci"] == pytest.approx([0.7 - half, 0.7 + half], abs=0.15 * half)
    assert r["per_task"]["small"]["n"] == 100 and r["per_task"]["big"]["mean"] == pytest.approx(0.9)
    split = grouped([1, 0, 1, 1], ["x", "y", "x", "y"])
    assert list(split) == ["x", "y"] and split["y"].tolist() == [0.0, 1.0]


def test_paired_difference():
    a = _bernoulli(500, 0.6)
    same = paired_ci(a, a.copy())
    assert same == {"diff": 0.0, "ci": [0.0, 0.0], "n": 500, "excludes_zero": False}
    # b = a with 60 of a's correct answers turned wrong: a is better by 0.12 on every resample's scale
    b = a.copy()
    b[np.flatnonzero(a == 1)[:60]] = 0
    r = paired_ci(a, b)
    assert r["diff"] == pytest.approx(0.12) and r["excludes_zero"] and 0.08 < r["ci"][0] < 0.12 < r["ci"][1] < 0.16
    # pairing: the paired interval is narrower than the two unpaired intervals suggest
    assert r["ci"][1] - r["ci"][0] < 0.5 * (np.diff(mean_ci(a)["ci"])[0] + np.diff(mean_ci(b)["ci"])[0])
    flipped = paired_ci(b, a)
    assert flipped["diff"] == pytest.approx(-0.12) and flipped["excludes_zero"] and flipped["ci"][1] < 0
    # a small, noisy difference is not a result
    c = a.copy()
    c[np.flatnonzero(a == 1)[:2]] = 0
    c[np.flatnonzero(a == 0)[:1]] = 1
    assert not paired_ci(a, c)["excludes_zero"]


def test_paired_difference_by_member():
    a = np.concatenate([np.ones(50), _bernoulli(50, 0.5)])
    b = np.concatenate([np.zeros(50), _bernoulli(50, 0.5)])
    groups = ["m1"] * 50 + ["m2"] * 50
    r = paired_ci(a, b, groups=groups)
    assert r["diff"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert r["per_task"]["m1"] == {"n": 50, "diff": 1.0, "ci": [1.0, 1.0], "excludes_zero": True}
    assert r["per_task"]["m2"]["diff"] == 0.0 and r["per_task"]["m2"]["ci"] == [0.0, 0.0]
    assert r["ci"] == [0.5, 0.5] and r["excludes_zero"]


def test_bad_input():
    with pytest.raises(ConfigError, match="non-empty 1-D"):
        mean_ci([])
    with pytest.raises(ConfigError, match="finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ConfigError, match="differ in length"):
        paired_ci([1, 0], [1])
    with pytest.raises(ConfigError, match="one label per example"):
        paired_ci([1, 0], [1, 1], groups=["a"])
    with pytest.raises(ConfigError, match="resamples must be a positive integer"):
        mean_ci([1], resamples=0)
    with pytest.raises(ConfigError, match="confidence must be between 0 and 1"):
        mean_ci([1], confidence=95)
    with pytest.raises(ConfigError, match="no members"):
        macro_ci({})


def test_cluster_bootstrap_resamples_whole_clusters():
    import numpy as np

    from slimtune.evaluate.intervals import mean_ci, paired_ci

    rng = np.random.default_rng(1)
    per_cluster = rng.integers(0, 2, size=30).astype(float)  # 30 templates, 10 problems each, all alike
    scores = np.repeat(per_cluster, 10)
    clusters = np.repeat([f"t{i}" for i in range(30)], 10).tolist()
    by_cluster = mean_ci(scores, clusters=clusters)
    # equal cluster sizes: the same draws over 30 cluster means
    assert by_cluster["ci"] == mean_ci(per_cluster)["ci"] and by_cluster["n"] == 300
    by_example = mean_ci(scores)
    assert (by_cluster["ci"][1] - by_cluster["ci"][0]) > 2.5 * (by_example["ci"][1] - by_example["ci"][0])
    # singleton clusters are the ordinary bootstrap, draw for draw
    assert mean_ci(scores, clusters=list(range(300)))["ci"] == by_example["ci"]
    other = np.repeat(1 - per_cluster, 10)
    d = paired_ci(scores, other, clusters=clusters)
    assert d["ci"] == paired_ci(per_cluster, 1 - per_cluster)["ci"]
    members = ["a"] * 150 + ["b"] * 150
    g = paired_ci(scores, other, groups=members, clusters=clusters)
    assert g["per_task"]["a"]["n"] == 150 and g["ci"][1] - g["ci"][0] > d["ci"][1] - d["ci"][0] - 0.2


def test_gsm_examples_carry_their_template_as_cluster_and_evaluation_uses_it():
    from slimtune.data.tasks import Example, Task
    from slimtune.evaluate import with_intervals
    from slimtune.evaluate.intervals import mean_ci

    examples = [Example(f"q{i}", target="1", meta={"cluster": f"t{i // 5}"}) for i in range(40)]
    task = Task("toy", "generation", [], [], examples, score=lambda p, e: float(p == e.target))
    scores = [float((i // 5) % 2) for i in range(40)]
    r = with_intervals(task, examples, scores, "accuracy")
    assert r["clusters"][:6] == ["t0"] * 5 + ["t1"]
    assert r["accuracy_ci"] == mean_ci(scores, clusters=r["clusters"])["ci"] != mean_ci(scores)["ci"]
