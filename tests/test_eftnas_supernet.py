"""EFTNAS after the space: the supernet stage (sandwich + distillation), search over its elastic widths (accuracy
vs MACs), extraction per budget into physically smaller models that load back (per-layer widths and fewer
BERT heads through widths_io), the recipe end to end on a tiny BERT, and the errors on bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError, ModelLoadError
from slimtune.lineage import LeakageError
from slimtune.models import load_model
from slimtune.nas import SearchSpace
from slimtune.nas.elastic_model import extract_model
from slimtune.nas.importance import space_from_widths
from slimtune.nas.search import pick
from slimtune.recipe import load_recipe, run_recipe
from slimtune.widths_io import WIDTHS_FILE

FAST = dict(max_steps=3, batch_size=8, max_length=48, warmup_steps=0, logging_steps=1, save_steps=100)
TEXTS = ["a fine film, warm and funny", "dull and long, the worst of the year", "it is a movie"]
RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "eftnas.yaml"


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """teacher -> space (budgets 0.4, 0.7, 1) -> supernet (through the CLI) -> search (accuracy vs macs)."""
    root = tmp_path_factory.mktemp("eftnas-supernet")
    teacher = api.finetune(tiny_bert_dir, out=root / "teacher", task="polarity", adapter="full", importance=True,
                           progress=False, **FAST)
    space, result = api.space(teacher, out=root / "space", budgets=3, min_fraction=0.4)
    assert main(["supernet", "--space", str(space), "--out", str(root / "super"), "--max-steps", "3",
                 "--batch-size", "8", "--max-length", "48", "--warmup-steps", "0", "--save-steps", "100"]) == 0
    search = api.search(root / "super", out=root / "search", objectives=["accuracy", "macs"], trials=8, limit=16,
                        progress=False)
    return {"root": root, "teacher": teacher, "space": space, "result": result, "super": root / "super",
            "search": search}


def _batch(tok):
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _manifest(path):
    return json.loads((Path(path) / "slimtune.json").read_text())


def test_supernet_artifact_trains_sandwich_with_lineage(run):
    m = _manifest(run["super"])
    assert m["stage"] == "supernet" and m["method"] == "eftnas-sandwich"
    assert m["config"]["alpha"] == 0.1 and m["config"]["temperature"] == 2.0
    assert m["config"]["train"]["learning_rate"] == 5e-5 and m["metrics"]["steps"] == 3
    assert m["config"]["teacher"] == str(run["space"])  # default: the space's own (reordered teacher) model
    space = SearchSpace.load(run["super"])
    assert space.to_dict() == SearchSpace.load(run["space"]).to_dict()
    history = json.loads((run["super"] / "elastic_history.json").read_text())
    assert len(history) == 9 and m["metrics"]["configurations_trained"] == 9
    assert history[0]["config"] == space.maximal() and history[2]["config"] == space.minimal()
    assert (run["super"] / "eftnas_space.json").is_file() and (run["super"] / "importance.json").is_file()
    from slimtune.data.registry import load_task

    trained = {i for r in m["lineage"] if r["use"] == "train" for i in r["ids"]}
    assert trained == {ex.id for ex in load_task("polarity").train}  # the teacher's and the supernet's (same set)
    net, tok = load_model(run["super"])
    teacher, _ = load_model(run["teacher"])
    with torch.no_grad():  # the weights trained: no longer the teacher's function
        assert (net(**_batch(tok)).logits - teacher(**_batch(tok)).logits).abs().max() > 1e-6


def test_budgets_sampler_trains_the_spaces_intermediate_budget(run, tmp_path):
    budgets = run["result"]["budgets"]  # 0.4, 0.7, 1.0: one budget between the smallest and the full
    middle = next(b["widths"] for b in budgets if b["fraction"] == 0.7)
    out = api.supernet(run["space"], out=tmp_path / "super", sampler="budgets", progress=False, **FAST)
    m = _manifest(out)
    assert m["method"] == "eftnas-budgets" and m["config"]["sampler"] == "budgets"
    space = SearchSpace.load(out)
    history = json.loads((out / "elastic_history.json").read_text())
    assert [h["config"] for h in history] == [space.maximal(), space.check(middle), space.minimal()] * 3
    # a space recording no budget between its ends is refused before any work
    two = tmp_path / "two-budgets"
    shutil.copytree(run["space"], two)
    record = json.loads((two / "eftnas_space.json").read_text())
    record["budgets"] = [b for b in record["budgets"] if b["fraction"] != 0.7]
    (two / "eftnas_space.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="records none .* build the space with three or more budgets"):
        api.supernet(two, out=tmp_path / "refused", sampler="budgets", **FAST)
    assert not (tmp_path / "refused").exists()


def test_search_and_extract_per_budget(run):
    root, full = run["root"], _manifest(run["super"])["metrics"]["parameters"]
    trials = [json.loads(line) for line in (run["search"] / "trials.jsonl").read_text().splitlines()]
    assert trials[0]["heuristic"] == "maximal"
    for budget in run["result"]["budgets"]:  # the space's budget widths are first trials (under a heuristic's label
        assert budget["widths"] in [t["config"] for t in trials[:5]]  # when one has the same widths)
    search_lineage = _manifest(run["search"])["lineage"]
    assert any(r["stage"] == "search" and r["use"] == "select" and r["split"] == "validation" for r in search_lineage)
    supernet, tok = load_model(run["super"])
    space = SearchSpace.load(run["super"])
    for fraction in (0.4, 0.7):
        out = api.extract(out=root / f"sub{fraction}", from_search=run["search"], pick=f"budget={fraction}")
        m = _manifest(out)
        assert m["metrics"]["macs_fraction"] <= fraction * 1.01  # the budget, within its tolerance
        assert m["metrics"]["parameters"] < full and m["metrics"]["full_parameters"] == full
        small, _ = load_model(out)  # after save and reload
        assert sum(p.numel() for p in small.parameters()) == m["metrics"]["parameters"]
        space.apply(supernet, m["config"]["widths"])
        with torch.no_grad():
            expected = supernet(**_batch(tok)).logits
            assert (small(**_batch(tok)).logits - expected).abs().max() <= 1e-5
        space.apply(supernet, space.maximal())
        with pytest.raises(LeakageError):  # the search selected on the validation split
            api.evaluate(out, task="polarity", split="validation", progress=False)
        with pytest.raises(LeakageError):  # and the teacher and supernet trained on the training split
            api.evaluate(out, task="polarity", split="train", progress=False)
        assert api.evaluate(out, task="polarity", split="test", progress=False)["n"] == 50


def _elastic_copy(run, tmp_path, widths) -> tuple[Path, SearchSpace]:
    """The supernet with another search space over the same bindings (to choose the widths a test needs)."""
    copy = tmp_path / "elastic"
    shutil.copytree(run["super"], copy)
    net, _ = load_model(copy)
    space = space_from_widths(net, widths)
    space.save(copy)
    return copy, space


@pytest.mark.parametrize("case", ["per-layer heads and widths", "uniform fewer heads", "uniform mlp"])
def test_extracted_widths_load_back(run, tmp_path, case):
    heads0, heads1, mlp0, mlp1 = {"per-layer heads and widths": (2, 3, 96, 40), "uniform fewer heads": (2, 2, 128, 128),
                                  "uniform mlp": (4, 4, 64, 64)}[case]
    layers = "bert.encoder.layer"
    widths = {f"{layers}.0:heads": [4, heads0], f"{layers}.1:heads": [4, heads1], f"{layers}.0:mlp": [128, mlp0],
              f"{layers}.1:mlp": [128, mlp1]}
    source, space = _elastic_copy(run, tmp_path, {k: sorted(set(v), reverse=True) for k, v in widths.items()})
    config = {k: v[1] for k, v in widths.items()}
    out = api.extract(source, out=tmp_path / "sub", select=config)
    recorded = (out / WIDTHS_FILE).is_file()
    assert recorded == (case != "uniform mlp")  # stock configs describe uniform MLP widths with every head
    if recorded:
        data = json.loads((out / WIDTHS_FILE).read_text())
        assert data["heads"] == {f"{layers}.0.attention.self.query": heads0, f"{layers}.1.attention.self.query": heads1}
        assert data["shapes"][f"{layers}.1.attention.self.query"] == [16 * heads1, 64]
    else:
        from transformers import AutoModelForSequenceClassification

        stock = AutoModelForSequenceClassification.from_pretrained(out)
        assert stock.config.intermediate_size == 64
    small, tok = load_model(out)
    net, _ = load_model(source)
    space.apply(net, config)
    with torch.no_grad():
        assert (small(**_batch(tok)).logits - net(**_batch(tok)).logits).abs().max() <= 1e-5
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())


def test_widths_file_that_does_not_fit_is_refused(run, tmp_path):
    layers = "bert.encoder.layer"
    source, _ = _elastic_copy(run, tmp_path, {f"{layers}.0:heads": [4, 2]})
    out = api.extract(source, out=tmp_path / "sub", select={f"{layers}.0:heads": 2})
    data = json.loads((out / WIDTHS_FILE).read_text())
    data["heads"][f"{layers}.0.attention.self.query"] = 3
    (out / WIDTHS_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="3 heads do not fit its 32 outputs"):
        load_model(out)


def test_extract_model_in_memory_matches_for_uniform_heads(run):
    net, tok = load_model(run["super"])
    space = space_from_widths(net, {n: [4, 1] for n in ("bert.encoder.layer.0:heads", "bert.encoder.layer.1:heads")})
    sub, shapes = extract_model(net, space, {"bert.encoder.layer.0:heads": 1, "bert.encoder.layer.1:heads": 1})
    assert sub.config.num_attention_heads == 4 and shapes["bert.encoder.layer.0.attention.self.query"] == [16, 64]
    space.apply(net, {"bert.encoder.layer.0:heads": 1, "bert.encoder.layer.1:heads": 1})
    with torch.no_grad():
        assert (sub(**_batch(tok)).logits - net(**_batch(tok)).logits).abs().max() <= 1e-5


def test_pick_budget():
    records = [{"trial": 0, "heuristic": "maximal", "objectives": {"accuracy": 0.8, "macs": 100.0}},
               {"trial": 1, "heuristic": None, "objectives": {"accuracy": 0.7, "macs": 50.5}},
               {"trial": 2, "heuristic": None, "objectives": {"accuracy": 0.7, "macs": 40.0}},
               {"trial": 3, "heuristic": None, "objectives": {"accuracy": 0.6, "macs": 30.0}},
               {"trial": 4, "heuristic": None, "objectives": {"accuracy": 0.9, "macs": 52.0}}]
    objectives = ["accuracy", "macs"]
    assert pick(records, records, objectives, "budget=0.5")["trial"] == 1  # a tie goes to the one using the budget
    assert pick(records, records, objectives, "budget=0.5:0.05")["trial"] == 4
    assert pick(records, records, objectives, "budget=0.3")["trial"] == 3
    with pytest.raises(ConfigError, match="cheapest costs 0.300"):
        pick(records, records, objectives, "budget=0.2")
    with pytest.raises(ConfigError, match="expected budget=<fraction"):
        pick(records, records, objectives, "budget=half")
    with pytest.raises(ConfigError, match="needs a cost objective"):
        pick(records, records, ["accuracy"], "budget=0.5")


def test_pick_budget_treats_noise_as_a_tie():
    """A cheaper trial ahead by less than one standard error of a validation slice does not win the budget."""
    records = [{"trial": 0, "heuristic": "maximal", "objectives": {"accuracy": 0.80, "macs": 100.0}},
               {"trial": 1, "heuristic": None, "objectives": {"accuracy": 0.895, "macs": 50.2}},
               {"trial": 2, "heuristic": None, "objectives": {"accuracy": 0.91, "macs": 24.8}},
               {"trial": 3, "heuristic": None, "objectives": {"accuracy": 0.86, "macs": 40.0}}]
    objectives = ["accuracy", "macs"]
    assert pick(records, records, objectives, "budget=0.5")["trial"] == 2  # unknown slice size: the most accurate
    # 200 examples: one standard error at 0.91 is 0.020, so 0.895 ties 0.91 and the costlier trial takes the budget
    assert pick(records, records, objectives, "budget=0.5", scored=200)["trial"] == 1
    assert pick(records, records, objectives, "budget=0.5", scored=5000)["trial"] == 2  # 0.004: a real lead
    assert pick(records, records, objectives, "budget=0.3", scored=200)["trial"] == 2
    # ties whose costs differ by less than the tolerance (1% of the maximal cost): the more accurate one
    near = records + [{"trial": 4, "heuristic": None, "objectives": {"accuracy": 0.905, "macs": 49.9}}]
    assert pick(near, near, objectives, "budget=0.5", scored=200)["trial"] == 4
    farther = records + [{"trial": 4, "heuristic": None, "objectives": {"accuracy": 0.905, "macs": 48.5}}]
    assert pick(farther, farther, objectives, "budget=0.5", scored=200)["trial"] == 1  # 1.7% cheaper: the costlier
    assert pick(farther, farther, objectives, "budget=0.5:0.02", scored=200)["trial"] == 4
    loss = [{**r, "objectives": {"loss": 1 - r["objectives"]["accuracy"], "macs": r["objectives"]["macs"]}}
            for r in records]
    assert pick(loss, loss, ["loss", "macs"], "budget=0.5", scored=200)["trial"] == 2  # no interval for a loss


def test_search_on_measured_prefill_latency(run, tmp_path):
    out = api.search(run["super"], out=tmp_path / "s", objectives=["accuracy", "latency_prefill"], trials=2, limit=4,
                     population=2, latency_seq_len=16, latency_repeats=1, progress=False)
    for line in (out / "trials.jsonl").read_text().splitlines():  # a positive number of ms (never a timed assertion)
        value = json.loads(line)["objectives"]["latency_prefill"]
        assert isinstance(value, float) and 0 < value < float("inf")
    with pytest.raises(ConfigError, match=r"\['latency_decode'\] do not apply to an elastic-width classifier"):
        api.search(run["super"], out=tmp_path / "d", objectives=["accuracy", "latency_decode"], trials=2)
    assert not (tmp_path / "d").exists()


def test_bad_inputs_fail_before_work(run, tmp_path):
    with pytest.raises(ConfigError, match="not a model with an elastic search space"):
        api.supernet(run["teacher"], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match=r"invalid supernet options: alpha"):
        api.supernet(run["space"], out=tmp_path / "x", alpha=1.5)
    with pytest.raises(ConfigError, match=r"\['loss'\] do not apply to an elastic-width classifier"):
        api.search(run["super"], out=tmp_path / "s", objectives=["loss", "macs"], trials=2)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="select nncf"):
        api.extract(run["super"], out=tmp_path / "e", select="nncf")


def test_decoder_supernet_and_extraction(tiny_llama_dir, tmp_path):
    imp = api.importance(tiny_llama_dir, out=tmp_path / "imp", task="polarity", limit=8, batch_size=4)
    space, _ = api.space(tiny_llama_dir, importance=imp, out=tmp_path / "space", budgets=2, min_fraction=0.6)
    sup = api.supernet(space, out=tmp_path / "super", task="polarity", teacher=tiny_llama_dir, progress=False,
                       **{**FAST, "max_steps": 2})
    m = _manifest(sup)
    assert m["config"]["classifier"] is False and m["metrics"]["configurations_trained"] == 6
    out = api.extract(sup, out=tmp_path / "sub", select="minimal")
    small, tok = load_model(out)
    net, _ = load_model(sup)
    space_obj = SearchSpace.load(sup)
    space_obj.apply(net, space_obj.minimal())
    ids = tok(["the news today was"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (small(ids).logits - net(ids).logits).abs().max() <= 1e-5
    assert _manifest(out)["metrics"]["macs_fraction"] <= 0.6 * 1.01
    # the budgets sampler on a decoder: the middle configuration of every step is the 0.8 budget's widths
    space3, result = api.space(tiny_llama_dir, importance=imp, out=tmp_path / "space3", budgets=3, min_fraction=0.6)
    sup3 = api.supernet(space3, out=tmp_path / "super3", task="polarity", teacher=tiny_llama_dir, sampler="budgets",
                        progress=False, **{**FAST, "max_steps": 2})
    middle = SearchSpace.load(sup3).check(next(b["widths"] for b in result["budgets"] if b["fraction"] == 0.8))
    history = json.loads((sup3 / "elastic_history.json").read_text())
    assert [h["config"] for h in history][1::3] == [middle, middle]


def _small_recipe(model) -> dict:
    data = load_recipe(RECIPE).model_dump()
    data["model"] = str(model)
    for st in data["stages"]:
        if st["stage"] in ("finetune", "supernet"):
            st["train"].update(max_steps=3, batch_size=8, max_length=48, save_steps=100)
        if st["stage"] == "importance":
            st.update(limit=16, max_length=48)
        if st["stage"] == "space":
            st["budgets"] = [0.4, 0.7, 1.0]
        if st["stage"] == "search":
            st.update(trials=6, limit=16)
        if st["stage"] == "extract":
            st["pick"] = {"budget=0.5": "budget=0.7", "budget=0.25": "budget=0.4"}[st["pick"]]
        if st["stage"] == "evaluate":
            st["limit"] = 20
    return data


def test_eftnas_recipe_end_to_end(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "run"
    paths = run_recipe(load_recipe(_small_recipe(tiny_bert_dir)), run_dir, progress=False, log=lambda *_: None)
    teacher = _manifest(paths["teacher"])["metrics"]["parameters"]
    for name, fraction in (("sub50", 0.7), ("sub25", 0.4)):
        m = _manifest(paths[name])
        assert m["stage"] == "extract" and m["metrics"]["macs_fraction"] <= fraction * 1.01
        assert m["metrics"]["parameters"] < teacher
        assert {r["use"] for r in m["lineage"]} == {"train", "select"}
        load_model(paths[name])
    space = _manifest(paths["space"])
    assert all(abs(b["relative_error"]) <= 0.01 for b in space["metrics"]["budgets"])
    assert _manifest(paths["space"])["config"]["importance"] is None  # the teacher's own, summed over fine-tuning
    assert (paths["teacher"] / "importance.json").is_file() and "importance" not in paths
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results) == {"teacher", "sub50", "sub25"}
    for r in results.values():  # held out: the test split, disjoint from every training and selection set
        assert r["split"] == "test" and r["n"] == 20 and r["held_out"]["overlap"] == 0
        assert {c["use"] for c in r["held_out"]["checked_against"]} >= {"train"}
    assert {c["use"] for c in results["sub25"]["held_out"]["checked_against"]} == {"train", "select"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "sub50", "sub25"}
    # a re-run skips every complete stage
    logged = []
    run_recipe(load_recipe(_small_recipe(tiny_bert_dir)), run_dir, progress=False, log=logged.append)
    assert sum("complete, skipped" in line for line in logged) == len(load_recipe(RECIPE).stages)


@pytest.mark.parametrize("stages, message", [
    ([{"name": "s", "stage": "supernet"}], "stages[0] (s): a supernet stage needs an earlier space stage"),
    ([{"name": "t", "stage": "finetune", "adapter": "full"}, {"name": "sp", "stage": "space", "importance": "t"}],
     "stages[1] (sp): 't' is not an earlier stage that makes an importance"),
    ([{"name": "t", "stage": "finetune", "adapter": "full"}, {"name": "sp", "stage": "space"},
      {"name": "s", "stage": "supernet", "teacher": "sp"}], "stages[2] (s): 'sp' is not an earlier stage that makes a model"),
    ([{"name": "t", "stage": "finetune", "adapter": "full"}, {"name": "sp", "stage": "space"},
      {"name": "s", "stage": "supernet", "alpha": 2}], "stages[2].alpha: Input should be less than or equal to 1"),
    ([{"name": "t", "stage": "finetune", "adapter": "full"}, {"name": "e", "stage": "evaluate", "models": ["t"]},
      {"name": "x", "stage": "search", "input": "t"}], "stages[2] (x).input: 't' makes a model, a search stage reads"),
])
def test_bad_eftnas_recipes_are_refused_before_work(tiny_bert_dir, tmp_path, stages, message):
    with pytest.raises(ConfigError) as e:
        run_recipe(load_recipe({"model": str(tiny_bert_dir), "stages": stages}), tmp_path / "run", log=lambda *_: None)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_recipe_space_reads_an_importance_stage_and_a_supernet_its_teacher_stage(tiny_bert_dir):
    """The recipe's other route (scores from passes over the finished teacher): what each stage reads."""
    from slimtune.recipe import plan

    recipe = load_recipe({"model": str(tiny_bert_dir), "stages": [
        {"name": "t", "stage": "finetune", "adapter": "full"}, {"name": "imp", "stage": "importance"},
        {"name": "sp", "stage": "space", "input": "t", "importance": "imp"},
        {"name": "s", "stage": "supernet", "teacher": "t"}, {"name": "x", "stage": "search"},
        {"name": "small", "stage": "extract", "pick": "budget=0.5"}, {"name": "e", "stage": "evaluate", "models": ["small"]}]})
    assert plan(recipe) == {"t": "model", "imp": "t", "sp": "t", "s": "sp", "x": "s", "small": "x"}
    assert [st.extra_inputs() for st in recipe.stages[2:4]] == [["imp"], ["t"]]


def test_search_over_an_untrained_space_reads_its_task_from_the_lineage(run, tmp_path):
    """The space itself (the reordered teacher, sliced without super-network training: a baseline) is
    searchable too; its task comes from its lineage, and params is a cost objective."""
    out = api.search(run["space"], out=tmp_path / "search", objectives=["accuracy", "params"], trials=3, limit=8,
                     progress=False)
    assert json.loads((out / "search_config.json").read_text())["task"] == "polarity"
    sub = api.extract(out=tmp_path / "sub", from_search=out, pick="smallest")
    m = _manifest(sub)
    assert m["metrics"]["parameters"] < m["metrics"]["full_parameters"]
    assert m["metrics"]["params_fraction"] == pytest.approx(m["metrics"]["parameters"] / m["metrics"]["full_parameters"])


def test_extracted_subnetwork_with_per_layer_widths_fine_tunes(run, tmp_path):
    """An extracted sub-network whose widths no stock config describes (widths_io) loads as a classifier,
    fine-tunes (the magnitude-pruned baseline of bench/eftnas.py) and is written with its shapes."""
    from slimtune.classify.model import load_classifier

    layers = "bert.encoder.layer"
    source, _ = _elastic_copy(run, tmp_path, {f"{layers}.0:heads": [4, 2], f"{layers}.1:mlp": [128, 40]})
    sub = api.extract(source, out=tmp_path / "sub", select={f"{layers}.0:heads": 2, f"{layers}.1:mlp": 40})
    assert (sub / WIDTHS_FILE).is_file()
    net, _ = load_classifier(sub)
    assert net.get_submodule(f"{layers}.0.attention.self.query").out_features == 32
    tuned = api.finetune(sub, out=tmp_path / "tuned", task="polarity", adapter="full", progress=False, **FAST)
    assert (tuned / WIDTHS_FILE).read_text() == (sub / WIDTHS_FILE).read_text()
    small, _ = load_model(sub)
    after, _ = load_model(tuned)
    assert sum(p.numel() for p in after.parameters()) == sum(p.numel() for p in small.parameters())
    assert after.get_submodule(f"{layers}.1.intermediate.dense").out_features == 40
    assert api.evaluate(tuned, task="polarity", split="test", progress=False)["n"] == 50
