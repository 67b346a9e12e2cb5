"""Recipes: every example recipe runs (tiny model), re-runs skip, interrupted runs resume, bad recipes fail first."""

import json
from pathlib import Path

import pytest
import torch

from slimtune import api
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.quant import quant_linears
from slimtune.recipe import load_recipe, run_recipe

# eftnas.yaml compresses an encoder classifier: tests/test_eftnas_supernet.py runs it on a tiny BERT;
# eftnas-decoder.yaml ends dense and unmerged: tests/test_full_finetune.py runs it on the tiny Llama
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples" / "recipes").glob("*.yaml")
                 if p.stem not in ("eftnas", "eftnas-decoder"))


def _quiet(*_):
    pass


def _small(recipe: Path, model) -> dict:
    """The recipe as written, with sizes cut so that it runs in seconds on the tiny model."""
    data = load_recipe(recipe).model_dump()
    data["model"] = str(model)
    for st in data["stages"]:
        if st.get("calibration"):
            st["calibration"].update(n_samples=4, seq_len=64)
        if st["stage"] == "finetune":
            st["train"].update(max_steps=6)
        if st["stage"] in ("extract", "search", "evaluate"):
            st["limit"] = 6
        if st["stage"] == "search":
            st["trials"] = 6
        if st["stage"] == "evaluate":
            st.update(max_windows=1, seq_len=64)
    return data


def test_there_is_a_recipe_for_each_pipeline_of_the_papers():
    assert {p.stem for p in RECIPES} >= {"shears", "shears-lora", "sqft-sparsepeft", "sqft-sparsepeft-nls",
                                        "sqft-qa-sparsepeft", "sqft-qa-sparsepeft-nls"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_example_recipe_runs_end_to_end(recipe, tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    paths = run_recipe(load_recipe(_small(recipe, tiny_llama_dir)), run, progress=False, log=_quiet)
    stages = load_recipe(recipe).stages
    for st in stages:
        assert (run / st.name / "slimtune.json").is_file(), st.name
    final = run / "final"
    facts = api.inspect(final)["total"]
    # every pipeline here ends sparse (LoNAS keeps a prefix of down's / o's input columns, and Wanda's
    # exact per-row count holds over the whole row, so a sliced row keeps about, not exactly, half zeros)
    assert facts["sparsity"] >= (0.49 if recipe.stem == "lonas" else 0.5)
    if "qa" in recipe.stem or "sparsepeft" in recipe.stem and "sqft" in recipe.stem:
        net, _ = load_model(final)
        assert quant_linears(net) and {q.bits for q in quant_linears(net).values()} == {4}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == set(stages[-1].models)
    assert all(0 <= m["accuracy"] <= 1 and m["perplexity"] > 1 for m in metrics["models"].values())
    for m in metrics["models"].values():  # every accuracy with its interval, on the same held-out examples
        lo, hi = m["accuracy_ci"]
        assert lo <= m["accuracy"] <= hi and m["split_seed"] == 0 and m["n"] == 6
    if recipe.stem == "lonas":  # the report's costs: the searched sub-network is no larger (the knee may be maximal)
        models = metrics["models"]
        assert 0 < models["final"]["parameters"] <= models["model"]["parameters"]
        assert 0 < models["final"]["macs_per_token"] <= models["model"]["macs_per_token"]
        assert "| parameters (M) | MACs per token (M) |" in (run / "report.md").read_text()
    evaluated = stages[-1].models
    assert [(c["a"], c["b"]) for c in metrics["comparisons"]] == [(a, b) for i, a in enumerate(evaluated)
                                                                  for b in evaluated[:i]]
    for c in metrics["comparisons"]:
        assert c["ci"][0] <= c["diff"] <= c["ci"][1] and c["excludes_zero"] == (c["ci"][0] > 0 or c["ci"][1] < 0)
    report = (run / "report.md").read_text()
    assert "## Paired differences (same test examples)" in report
    for png in ("models.png", "sparsity.png"):
        assert f"]({png})" in report and (run / png).read_bytes()[:4] == b"\x89PNG"
    if any(st.stage == "extract" for st in stages):
        assert "](ranks.png)" in report
    if any(st.stage == "search" for st in stages):
        assert "](search/pareto.png)" in report
    assert paths["final"] == final


def test_rerun_skips_complete_stages_and_resumes_an_interrupted_one(tiny_llama_dir, tmp_path, monkeypatch):
    recipe = {"model": str(tiny_llama_dir), "task": "polarity", "stages": [
        {"name": "sparse", "stage": "sparsify", "method": "magnitude", "sparsity": 0.5},
        {"name": "adapter", "stage": "finetune", "rank": 2, "sparse_adapter": True,
         "train": {"max_steps": 4, "save_steps": 2, "batch_size": 4}},
        {"name": "final", "stage": "merge"}]}
    run = tmp_path / "run"
    calls = []
    real_merge = api.merge

    def interrupted_merge(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "merge", interrupted_merge)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe), run, progress=False, log=_quiet)
    assert calls and not (run / "final").exists() and (run / "adapter" / "slimtune.json").is_file()
    monkeypatch.setattr(api, "merge", real_merge)
    log = []
    run_recipe(load_recipe(recipe), run, progress=False, log=log.append)
    assert [l for l in log if "skipped" in l] == ["[1/3] sparsify sparse: complete, skipped",
                                                  "[2/3] finetune adapter: complete, skipped"]
    first = (run / "final" / "slimtune.json").read_text()
    log.clear()
    run_recipe(load_recipe(recipe), run, progress=False, log=log.append)
    assert sum("skipped" in l for l in log) == 3 and (run / "final" / "slimtune.json").read_text() == first
    # changing a stage re-runs it and what depends on it, not what comes before
    recipe["stages"][1]["rank"] = 3
    log.clear()
    run_recipe(load_recipe(recipe), run, progress=False, log=log.append)
    assert [l.split(":")[0] for l in log if "running" in l] == ["[2/3] finetune adapter", "[3/3] merge final"]
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 3


def test_an_interrupted_finetune_stage_resumes_from_its_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import slimtune.train as train_mod

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    recipe = load_recipe({"model": str(tiny_llama_dir), "stages": [
        {"name": "adapter", "stage": "finetune", "rank": 2, "train": {"max_steps": 5, "save_steps": 2, "batch_size": 4}}]})
    real_train = train_mod.train
    monkeypatch.setattr("slimtune.finetuning.train", lambda *a, **k: real_train(*a, **{**k, "callbacks": [Stop()]}))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run", progress=False, log=_quiet)
    assert (tmp_path / "run" / ".adapter.checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.setattr("slimtune.finetuning.train", real_train)
    run_recipe(recipe, tmp_path / "run", progress=False, log=_quiet)
    manifest = json.loads((tmp_path / "run" / "adapter" / "slimtune.json").read_text())
    assert manifest["metrics"]["steps"] == 5
    assert not (tmp_path / "run" / ".adapter.checkpoints").exists()


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"name": "a", "stage": "finetune", "rankk": 4}]}, "stages[0].rankk: Extra inputs are not permitted"),
    ({"stages": [{"name": "a", "stage": "finetune", "rank": "big"}]}, "stages[0].rank: Input should be a valid integer"),
    ({"stages": [{"name": "a", "stage": "prune"}]}, "stages[0]: Input tag 'prune' found using 'stage' does not match"),
    ({"stages": [{"name": "a", "stage": "finetune", "train": {"learning_rate": -1}}]},
     "stages[0].train.learning_rate: Input should be greater than 0"),
    ({"stages": [{"name": "a", "stage": "finetune", "quant_aware": True}]},
     "stages[0] (a).quant_aware: its input 'model' is not quantized; add a quantize stage"),
    ({"stages": [{"name": "s", "stage": "sparsify"}, {"name": "a", "stage": "finetune"}, {"name": "x", "stage": "extract"}]},
     "stages[2] (x): extract needs an elastic super-adapter; set adapter: nls in stage 'a'"),
    ({"stages": [{"name": "x", "stage": "merge"}]}, "stages[0] (x): a merge stage needs an earlier finetune stage"),
    ({"stages": [{"name": "a", "stage": "sparsify"}, {"name": "a", "stage": "quantize"}]}, "is used twice"),
    ({"stages": [{"name": "e", "stage": "evaluate", "models": ["final"]}]}, "stages[0] (e).models: 'final' is not"),
    ({"stages": [{"name": "q", "stage": "quantize", "input": "later"}, {"name": "later", "stage": "sparsify"}]},
     "stages[0] (q).input: 'later' is not an earlier stage"),
    ({"stagez": []}, "stagez: Extra inputs are not permitted"),
    ({"stages": [{"name": "d", "stage": "export", "format": "compressed-tensors", "embeddings": "float16"}]},
     "stages[0] (d).format: compressed-tensors re-writes a packed INT4 model and its input 'model' is not quantized"),
    ({"stages": [{"name": "q", "stage": "quantize"}, {"name": "d", "stage": "export", "format": "compressed-tensors"}]},
     "stages[1]: a compressed-tensors export re-writes a packed model; set embeddings to float16"),
    ({"stages": [{"name": "g", "stage": "export"}, {"name": "e", "stage": "evaluate", "models": ["g"]}]},
     "stages[1] (e).models: 'g' is not 'model' or an earlier stage that makes a model"),
    ({"stages": [{"name": "q", "stage": "quantize", "method": "rtn", "observer": "imatrix"}]},
     "stages[0]: option observer='imatrix' is not valid; choose from 'minmax', 'mse'"),
    ({"stages": [{"name": "q", "stage": "quantize", "observer": "max"}]}, "stages[0]: option observer='max' is not valid; choose from 'minmax', 'mse', 'imatrix'"),
])
def test_bad_recipes_are_rejected_with_the_path_of_the_key(tiny_llama_dir, tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        run_recipe(load_recipe({"model": str(tiny_llama_dir), **change}), tmp_path / "run", log=_quiet)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_an_export_stage_makes_a_smaller_model_with_the_same_codes_that_later_stages_evaluate(tiny_llama_dir,
                                                                                               tmp_path):
    run = tmp_path / "run"
    run_recipe(load_recipe({"model": str(tiny_llama_dir), "stages": [
        {"name": "q", "stage": "quantize", "method": "rtn", "bits": 4, "group_size": 16},
        {"name": "d", "stage": "export", "format": "compressed-tensors", "embeddings": "float16"},
        {"name": "e", "stage": "evaluate", "models": ["q", "d"], "max_windows": 1, "seq_len": 32, "limit": 4}]}),
        run, progress=False, log=_quiet)
    (q, _), (d, _) = load_model(run / "q"), load_model(run / "d")
    for a, b in zip(quant_linears(q).values(), quant_linears(d).values()):
        assert torch.equal(a.codes(), b.codes())
    assert q.get_input_embeddings().weight.half().float().equal(d.get_input_embeddings().weight.float())
    results = json.loads((run / "e" / "results.json").read_text())
    assert set(results) == {"q", "d"} and abs(results["d"]["perplexity"] / results["q"]["perplexity"] - 1) < 0.01


def test_run_and_report_from_the_cli(tiny_llama_dir, tmp_path, capsys):
    from slimtune.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - {name: sparse, stage: sparsify, method: magnitude}\n"
                      "  - {name: eval, stage: evaluate, models: [model, sparse], max_windows: 1, limit: 4}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--model", str(tiny_llama_dir)]) == 0
    (tmp_path / "run" / "report.md").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| sparse |" in text and "](models.png)" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{name: a, stage: finetune, alpha: -1}]\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "stages[0].alpha: Input should be greater than 0" in capsys.readouterr().err


def test_merged_logits_of_the_qa_recipe_equal_the_quant_aware_forward(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "sqft-qa-sparsepeft.yaml"
    data = _small(recipe, tiny_llama_dir)
    data["stages"] = data["stages"][:4]  # no evaluate
    run_recipe(load_recipe(data), run, progress=False, log=_quiet)
    assert json.loads((run / "adapter" / "slimtune.json").read_text())["config"]["qa_weights"] == "float"  # auto
    net, tok = api.load_adapted(run / "int4", run / "adapter")
    merged, _ = load_model(run / "final")
    ids = tok("prices rose", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (merged(ids).logits - net(ids).logits).abs().max() <= 1e-5
