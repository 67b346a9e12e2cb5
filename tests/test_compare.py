"""`slimtune compare`: two models on the same examples, with the paired difference and its interval."""

import json

import pytest

from slimtune import api
from slimtune.cli import build_parser, main
from slimtune.data import load_task
from slimtune.errors import ConfigError
from slimtune.evaluate.compare import paired_difference


@pytest.fixture(scope="module")
def other_tiny_dir(tmp_path_factory):
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-1"), arch="llama", seed=1)


def test_a_model_against_itself_differs_by_exactly_zero(tiny_llama_dir, tmp_path):
    r = api.compare(tiny_llama_dir, tiny_llama_dir, task="polarity", limit=20, out=tmp_path / "c.json", progress=False)
    assert r["difference"] == {"diff": 0.0, "ci": [0.0, 0.0], "n": 20, "excludes_zero": False}
    assert r["a"]["acc"] == r["b"]["acc"] and r["a"]["ids"] == r["b"]["ids"] and r["n"] == 20
    assert (r["metric"], r["split"], r["split_seed"]) == ("acc", "test", 0)
    assert json.loads((tmp_path / "c.json").read_text())["difference"]["ci"] == [0.0, 0.0]


def test_two_models_paired_difference(tiny_llama_dir, other_tiny_dir):
    r = api.compare(tiny_llama_dir, other_tiny_dir, task="polarity", limit=30, progress=False)
    d = r["difference"]
    assert d["diff"] == pytest.approx(r["a"]["acc"] - r["b"]["acc"])
    assert d["ci"][0] <= d["diff"] <= d["ci"][1] and d["n"] == 30
    # where the two models agree on an example it adds 0 to every resample: the interval is at most
    # as wide as the fraction of examples on which they disagree allows
    disagree = sum(x != y for x, y in zip(r["a"]["scores"], r["b"]["scores"])) / 30
    assert d["ci"][1] - d["ci"][0] <= 2 * disagree + 1e-12


def test_suite_difference_per_member_and_on_the_average(tiny_llama_dir, other_tiny_dir):
    suite = load_task("suite:commonsense", train_per_task=0, validation_per_task=0, test_per_task=3)
    r = api.compare(tiny_llama_dir, other_tiny_dir, task=suite, progress=False)
    d = r["difference"]
    assert list(d["per_task"]) == list(suite.members) and all(m["n"] == 3 for m in d["per_task"].values())
    for m, diff in d["per_task"].items():
        assert diff["diff"] == pytest.approx(r["a"]["per_task"][m]["acc"] - r["b"]["per_task"][m]["acc"])
    assert d["diff"] == pytest.approx(r["a"]["average"] - r["b"]["average"])
    same = api.compare(tiny_llama_dir, tiny_llama_dir, task=suite, progress=False)["difference"]
    assert same["ci"] == [0.0, 0.0] and all(m["ci"] == [0.0, 0.0] for m in same["per_task"].values())


def test_paired_difference_needs_the_same_examples():
    a = {"ids": ["x", "y"], "scores": [1.0, 0.0]}
    with pytest.raises(ConfigError, match="different examples"):
        paired_difference(a, {"ids": ["y", "x"], "scores": [0.0, 1.0]})
    with pytest.raises(ConfigError, match="no per-example ids and scores"):
        paired_difference(a, {"perplexity": 3.0})


def test_compare_from_the_cli(tiny_llama_dir, capsys):
    assert main(["compare", str(tiny_llama_dir), str(tiny_llama_dir), "--task", "polarity", "--limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "task polarity (test split, split seed 0), 10 examples, metric acc" in out
    assert "A - B: +0.000 [+0.000, +0.000]" in out and "no significant difference: the interval holds 0" in out
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--adapter-a", "--adapter-b", "--task", "--split", "--limit", "--split-seed", "--out"):
        assert opt in text
    sub = build_parser()._subparsers._group_actions[0].choices["compare"]
    assert all(a.help for a in sub._actions)
