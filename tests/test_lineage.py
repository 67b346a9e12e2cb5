"""Held out by construction: every artifact records the examples its lineage trained and selected on,
and evaluation never reports on them (for every kind of task)."""

import json

import pytest

from slimtune import api, lineage
from slimtune.data import load_task
from slimtune.data.tasks import Example, Task
from slimtune.errors import DataError
from slimtune.lineage import LeakageError

TRAIN = dict(max_steps=2, batch_size=4, learning_rate=1e-2, warmup_steps=0, save_steps=50, max_length=48, seed=42,
             progress=False)


def _task(name, n=40):
    examples = [Example(f"Q{i}: is {i} even?\nA:", (" no", " yes"), int(i % 2 == 0)) for i in range(n)]
    train, val, test = examples[:20], examples[20:30], examples[30:]
    return Task(name, "multiple_choice", train, val, test)


def test_record_and_check_name_the_overlap():
    task = _task("parity")
    rec = lineage.record("finetune", "train", task, "train", task.train, "runs/a")
    assert rec["n"] == 20 and rec["ids"] == sorted(e.id for e in task.train) and len(rec["digest"]) == 16
    assert lineage.check_held_out([rec], task, "test", task.test)["overlap"] == 0
    with pytest.raises(LeakageError, match=r"3 of the 3 parity train examples .*3 were trained on by finetune "
                                           r"\(runs/a: task parity, split seed 0, train split\)"):
        lineage.check_held_out([rec], task, "train", task.train[:3])
    flagged = lineage.check_held_out([rec], task, "train", task.train[:3], allow_overlap=True)
    assert flagged["overlap"] == 3 and flagged["warning"].startswith("CONTAMINATED")
    assert flagged["overlap_by_use"] == {"train": 3, "select": 0}
    # the same records twice count once; a second use of the same examples is kept
    sel = lineage.record("extract", "select", task, "train", task.train, "runs/b")
    assert len(lineage.combine([rec], [rec, sel])) == 2


def test_split_seed_is_the_tasks_not_the_runs():
    a, b = load_task("polarity"), load_task("polarity", seed=42)
    assert (a.spec, a.split_seed, b.split_seed) == ("polarity", 0, 42)
    assert {e.id for e in a.test} != {e.id for e in b.test}
    assert not {e.id for e in a.test} & ({e.id for e in a.train} | {e.id for e in a.validation})
    with pytest.raises(DataError, match="split seed must be an integer"):
        load_task("polarity", seed="0")
    suite = Task("suite:mini", "multiple_choice", a.train, a.validation, a.test, members=("polarity",), split_seed=7)
    assert lineage.split_seed_for([lineage.record("finetune", "train", suite, "train", suite.train)], "polarity") == 7
    with pytest.raises(LeakageError, match="several split seeds"):
        lineage.split_seed_for([lineage.record("finetune", "train", t, "train", t.train) for t in (a, b)], "polarity")


def _file_task(tmp_path, generation):
    rows = ([{"prompt": f"Question: what is {i} plus {i}?\nAnswer:", "answer": f" {2 * i}"} for i in range(40)]
            if generation else
            [{"prompt": f"Is {i} larger than 20?", "choices": [" no", " yes"], "label": int(i > 20)} for i in range(40)])
    path = tmp_path / ("gen.jsonl" if generation else "mc.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("kind", ["builtin", "bigbench", "file", "generation"])
def test_finetune_extract_merge_evaluate_reports_only_held_out_examples(kind, tiny_llama_dir, tmp_path):
    spec = {"builtin": "polarity", "bigbench": "bigbench:strategyqa", "file": None, "generation": "gsm_symbolic"}[kind]
    if kind == "file":
        spec = _file_task(tmp_path, generation=False)
    options = {"bigbench": {"max_examples": 60},
               "generation": {"train_size": 12, "validation_size": 4, "test_size": 4}}.get(kind, {})
    task = load_task(spec, **options) if options else spec  # options make a Task object; plain specs stay strings
    sup = api.finetune(tiny_llama_dir, task=task, out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       alpha=8, dropout=0.0, **TRAIN)
    sub = api.extract(sup, out=tmp_path / "sub", select="nncf", limit=4, progress=False)
    merged = api.merge(sub, out=tmp_path / "merged")

    history = lineage.of(merged)
    uses = {(r["stage"], r["use"], r["split"]) for r in history}
    assert uses == {("finetune", "train", "train"), ("extract", "select", "validation")}
    assert all(r["split_seed"] == 0 for r in history)  # the training seed (42) never chose the split
    assert json.loads((sup / "slimtune.json").read_text())["config"]["split_seed"] == 0

    result = api.evaluate(merged, task=task, limit=4, progress=False)
    loaded = task if isinstance(task, Task) else load_task(task)
    reported = {e.id for e in loaded.test[:4]}
    seen = {i for r in history for i in r["ids"]}
    assert reported and not reported & seen
    assert result["held_out"]["overlap"] == 0 and result["split_seed"] == 0
    assert {r["use"] for r in result["held_out"]["checked_against"]} == {"train", "select"}

    # the examples the lineage trained on are refused, and reported only when allowed (and marked)
    with pytest.raises(LeakageError, match="trained on by finetune"):
        api.evaluate(merged, task=task, split="train", limit=3, progress=False)
    marked = api.evaluate(merged, task=task, split="train", limit=3, allow_overlap=True, progress=False)
    assert marked["held_out"]["overlap"] == 3 and "CONTAMINATED" in marked["held_out"]["warning"]


def test_evaluating_another_split_seed_of_the_training_task_is_refused(tiny_llama_dir, tmp_path):
    ad = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "ad", rank=2, dropout=0.0, **TRAIN)
    # a different split seed puts training sentences into the test split: that is the old leak
    with pytest.raises(LeakageError, match=r"of the 50 polarity test examples \(split seed 42\)"):
        api.evaluate(tiny_llama_dir, adapter=ad, task="polarity", split_seed=42, progress=False)
    clean = api.evaluate(tiny_llama_dir, adapter=ad, task="polarity", limit=5, progress=False)
    assert clean["held_out"]["overlap"] == 0


def test_lineage_flows_through_quantize_and_search(tiny_llama_dir, tmp_path, news_snippet):
    sup = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "super", adapter="nls", rank_space=[4, 2],
                       alpha=8, dropout=0.0, **TRAIN)
    search = api.search(sup, out=tmp_path / "search", trials=2, limit=3, progress=False)
    sub = api.extract(out=tmp_path / "sub", from_search=search, pick="best-accuracy")
    merged = api.merge(sub, out=tmp_path / "merged")
    requant = api.quantize(merged, out=tmp_path / "q", method="rtn", bits=8, group_size=-1, progress=False)
    uses = {(r["stage"], r["use"]) for r in lineage.of(requant)}
    assert uses == {("finetune", "train"), ("search", "select")}
    select = next(r for r in lineage.of(requant) if r["use"] == "select")
    assert select["n"] == 3 and select["split"] == "validation"
