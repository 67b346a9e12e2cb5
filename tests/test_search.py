"""Sub-adapter search on optuna: trials, Pareto front, resume, several workers, extraction of a trial."""

import json
import os
import subprocess
import sys

import pytest

from slimtune import api
from slimtune.errors import ArtifactError, ConfigError
from slimtune.nas.search import knee, pareto_front, pick

TRAIN = dict(max_steps=3, batch_size=4, learning_rate=2e-2, warmup_steps=0, save_steps=50, max_length=64, seed=3,
             progress=False)


@pytest.fixture(scope="module")
def super_adapter(tiny_llama_dir, tmp_path_factory):
    return api.finetune(tiny_llama_dir, task="polarity", out=tmp_path_factory.mktemp("s") / "super", adapter="nls",
                        rank_space=[4, 3, 2], groups="block", dropout=0.0, **TRAIN)


def _records(out):
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def test_search_writes_trials_front_and_plot_starting_from_the_heuristics(super_adapter, tmp_path):
    out = api.search(super_adapter, out=tmp_path / "search", trials=7, limit=4, population=4, progress=False)
    records = _records(out)
    assert [r["trial"] for r in records] == list(range(7))
    assert [r["heuristic"] for r in records[:4]] == ["maximal", "median", "minimal", "most_frequent"] or \
        [r["heuristic"] for r in records[:3]] == ["maximal", "median", "minimal"]
    assert records[0]["config"] == {"model.layers.0": 4, "model.layers.1": 4}
    assert records[2]["config"] == {"model.layers.0": 2, "model.layers.1": 2}
    # params is the adapter size of the configuration: r * (in + out) summed over the adapted modules
    assert records[0]["objectives"]["params"] == 2 * records[2]["objectives"]["params"]
    assert all(0.0 <= r["objectives"]["accuracy"] <= 1.0 for r in records)
    front = json.loads((out / "pareto.json").read_text())["front"]
    for f in front:  # nothing completed dominates a front member
        assert not any(r["objectives"]["accuracy"] >= f["objectives"]["accuracy"]
                       and r["objectives"]["params"] <= f["objectives"]["params"]
                       and r["objectives"] != f["objectives"] for r in records)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["metrics"]["completed_trials"] == 7 and 0 <= manifest["metrics"]["median_overhead_fraction"] < 1
    assert manifest["metrics"]["validation_examples"] == 4  # what a budget pick reads as its noise (search.pick_budget)
    # the same seed gives the same trials
    again = _records(api.search(super_adapter, out=tmp_path / "again", trials=7, limit=4, population=4, progress=False))
    assert [r["config"] for r in again] == [r["config"] for r in records]


def test_an_interrupted_search_resumes_where_it_stopped(super_adapter, tmp_path):
    out = tmp_path / "search"
    first = _records(api.search(super_adapter, out=out, trials=3, limit=2, progress=False))
    resumed = _records(api.search(super_adapter, out=out, trials=5, limit=2, progress=False))
    assert len(first) == 3 and len(resumed) == 5 and resumed[:3] == first
    with pytest.raises(ConfigError, match="other settings.*objectives"):
        api.search(super_adapter, out=out, trials=5, objectives=["loss", "params"])


def test_a_resumed_search_asks_for_the_trials_an_uninterrupted_one_asks_for(super_adapter, tmp_path):
    whole = _records(api.search(super_adapter, out=tmp_path / "whole", trials=9, limit=2, population=4, progress=False))
    api.search(super_adapter, out=tmp_path / "split", trials=5, limit=2, population=4, progress=False)
    resumed = _records(api.search(super_adapter, out=tmp_path / "split", trials=9, limit=2, population=4,
                                  progress=False))
    assert [r["config"] for r in resumed] == [r["config"] for r in whole]
    assert sum(r["heuristic"] is None for r in whole) >= 4  # the sampler, not only the heuristics, chose some


def test_two_workers_share_one_sqlite_study_without_losing_or_repeating_trials(tiny_llama_dir, super_adapter, tmp_path):
    out, db = tmp_path / "shared", tmp_path / "shared.db"
    cmd = [sys.executable, "-m", "slimtune.cli", "search", "--super-adapter", str(super_adapter), "--out", str(out),
           "--storage", f"sqlite:///{db}", "--trials", "8", "--limit", "3", "--population", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    records = _records(out)
    assert len(records) == 8 and len({r["trial"] for r in records}) == 8
    import optuna

    study = optuna.load_study(study_name="slimtune-search", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8  # exactly the budget, none lost, none duplicated
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert 1 <= len({r["worker"] for r in records}) <= 2  # (a worker may finish before the other has loaded)


def test_extract_from_search_picks_a_trial(super_adapter, tmp_path):
    out = api.search(super_adapter, out=tmp_path / "search", trials=5, limit=3, progress=False)
    records = _records(out)
    smallest = api.extract(out=tmp_path / "small", from_search=out, pick="smallest")
    manifest = json.loads((smallest / "slimtune.json").read_text())
    assert manifest["config"]["ranks"] == {"model.layers.0": 2, "model.layers.1": 2}  # the minimal trial
    assert manifest["method"].startswith("search:smallest:trial=")
    chosen = api.extract(out=tmp_path / "t1", from_search=out, pick="trial=1")
    assert json.loads((chosen / "slimtune.json").read_text())["config"]["ranks"] == records[1]["config"]
    with pytest.raises(ConfigError, match="not a completed trial"):
        api.extract(out=tmp_path / "x", from_search=out, pick="trial=99")
    with pytest.raises(ArtifactError, match="not a finished search run"):
        api.extract(out=tmp_path / "x", from_search=tmp_path)


def test_bad_search_input_is_rejected_before_work(tiny_llama_dir, super_adapter, tmp_path):
    with pytest.raises(ConfigError, match="objectives.1.: Input should be 'accuracy', 'loss', 'params', 'nonzero', "
                                          "'total_params', 'macs', 'latency_prefill' or 'latency_decode'"):
        api.search(super_adapter, out=tmp_path / "a", objectives=["accuracy", "latency"])
    with pytest.raises(ConfigError, match="rank-only super-adapter merges into sub-networks of one shape"):
        api.search(super_adapter, out=tmp_path / "a", objectives=["accuracy", "latency_prefill"])
    with pytest.raises(ConfigError, match="cannot open the search storage 'nosuchdb://x'"):
        api.search(super_adapter, out=tmp_path / "b", storage="nosuchdb://x")
    plain = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "plain", rank=2, **TRAIN)
    with pytest.raises(ArtifactError, match="not an elastic super-adapter"):
        api.search(plain, out=tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_pareto_front_knee_and_picks_on_known_points():
    pts = [(0.50, 10), (0.60, 20), (0.70, 40), (0.55, 30), (0.71, 100)]
    records = [{"trial": i, "objectives": {"accuracy": a, "params": p}} for i, (a, p) in enumerate(pts)]
    objectives = ["accuracy", "params"]
    front = pareto_front(records, objectives)
    assert [r["trial"] for r in front] == [0, 1, 2, 4]  # (0.55, 30) is dominated by (0.60, 20)
    assert knee(front, objectives)["trial"] == 2
    assert pick(records, front, objectives, "best-accuracy")["trial"] == 4
    assert pick(records, front, objectives, "smallest")["trial"] == 0
