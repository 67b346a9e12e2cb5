"""Full fine-tuning of a causal LM (full_finetune.py): EFTNAS' decoder teacher. Every weight trains on the
completion tokens, importance is summed over its steps in the format `slimtune importance` writes, the output
is held out by its lineage and feeds `space` and `supernet --teacher`; a sparse base keeps its zeros to the
last one, a packed INT4 base is refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.lineage import LeakageError
from slimtune.models import load_model, target_modules
from slimtune.nas.importance import IMPORTANCE_FILE, Importance, ImportanceCallback, structure_dimensions
from slimtune.recipe import load_recipe, run_recipe

FAST = dict(max_steps=8, batch_size=8, max_length=48, warmup_steps=0, logging_steps=1, save_steps=100)
RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "eftnas-decoder.yaml"


def _manifest(path):
    return json.loads((Path(path) / "slimtune.json").read_text())


def _weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def teacher(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "teacher"
    assert main(["finetune", "--model", str(tiny_llama_dir), "--out", str(out), "--task", "polarity", "--adapter",
                 "full", "--importance", "--learning-rate", "1e-3", "--max-steps", "8", "--batch-size", "8",
                 "--max-length", "48", "--warmup-steps", "0", "--logging-steps", "1", "--save-steps", "100"]) == 0
    return out


def test_every_weight_trains_on_the_completions(teacher, tiny_llama_dir):
    m = _manifest(teacher)
    assert m["stage"] == "finetune" and m["method"] == "full" and m["config"]["train"]["learning_rate"] == 1e-3
    base, tuned = _weights(tiny_llama_dir), _weights(teacher)
    assert set(base) == set(tuned) and all(not torch.equal(base[k], tuned[k]) for k in base)  # every weight moved
    losses = [h["loss"] for h in m["metrics"]["loss_history"]]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert m["metrics"]["trainable_parameters"] == m["metrics"]["parameters"]
    net, _ = load_model(teacher)  # a whole causal LM directory, no adapter
    assert net.config.architectures == ["LlamaForCausalLM"] and not (teacher / "adapter_config.json").exists()


def test_importance_is_summed_over_the_steps_in_the_importance_stage_format(teacher, tiny_llama_dir, tmp_path):
    scores = Importance.load(teacher)
    net, _ = load_model(tiny_llama_dir)
    dims = structure_dimensions(net)
    scores.check(dims)  # every head (KV group) and neuron of the model, nothing else
    assert set(scores.scores) == {d.name for d in dims} and scores.steps == 8 == _manifest(teacher)["metrics"]["importance_steps"]
    assert scores.source == "finetune" and all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in scores.scores.values())
    passes = json.loads((api.importance(tiny_llama_dir, out=tmp_path / "imp", task="polarity", limit=8) /
                         IMPORTANCE_FILE).read_text())
    written = json.loads((teacher / IMPORTANCE_FILE).read_text())
    assert {k: v for k, v in written.items() if k not in ("source", "steps", "dimensions")} == \
        {k: v for k, v in passes.items() if k not in ("source", "steps", "dimensions")}
    assert {n: (d["kind"], len(d["scores"])) for n, d in written["dimensions"].items()} == \
        {n: (d["kind"], len(d["scores"])) for n, d in passes["dimensions"].items()}


def test_the_teacher_is_held_out_and_feeds_space_and_supernet(teacher, tmp_path):
    lineage = _manifest(teacher)["lineage"]
    assert [(r["stage"], r["use"], r["task"], r["split_seed"]) for r in lineage] == [("finetune", "train", "polarity", 0)]
    with pytest.raises(LeakageError):
        api.evaluate(teacher, task="polarity", split="train", limit=10, progress=False)
    assert api.evaluate(teacher, task="polarity", split="test", limit=10, progress=False)["n"] == 10
    space, result = api.space(teacher, out=tmp_path / "space", budgets=2, min_fraction=0.6)  # its own importance
    assert _manifest(space)["config"]["importance"] is None and all(abs(b["relative_error"]) <= 0.01
                                                                    for b in result["budgets"])
    sup = api.supernet(space, out=tmp_path / "super", teacher=teacher, progress=False, **{**FAST, "max_steps": 2})
    m = _manifest(sup)
    assert m["config"]["teacher"] == str(teacher) and m["config"]["task"] == "polarity"  # the teacher's, by lineage
    assert m["metrics"]["configurations_trained"] == 6


def test_a_sparse_base_keeps_its_zeros(tiny_llama_dir, tmp_path):
    sparse = api.sparsify(tiny_llama_dir, out=tmp_path / "sparse", method="magnitude", sparsity=0.5, progress=False)
    out = api.finetune(sparse, out=tmp_path / "tuned", task="polarity", adapter="full", progress=False,
                       **{**FAST, "learning_rate": 1e-3, "max_steps": 3})
    m = _manifest(out)
    assert m["method"] == "full-sparse" and m["config"]["keep_zeros"] is True
    assert m["metrics"]["zero_fraction"] == m["metrics"]["base_zero_fraction"] >= 0.5
    net, _ = load_model(sparse)
    before, after = _weights(sparse), _weights(out)
    for name in target_modules(net):
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert torch.equal(w0 == 0, w1 == 0), name  # the same zeros, to the last one
        assert not torch.equal(w0, w1)  # and the others trained
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_packed_int4_and_misplaced_options_are_refused(tiny_llama_dir, tmp_path):
    rtn = api.quantize(tiny_llama_dir, out=tmp_path / "q", method="rtn", group_size=32, progress=False)
    with pytest.raises(ConfigError, match="full fine-tuning trains float weights.*quantized"):
        api.finetune(rtn, out=tmp_path / "x", task="polarity", adapter="full", progress=False, **FAST)
    with pytest.raises(ConfigError, match="quant_aware trains an adapter"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="full", quant_aware=True, progress=False, **FAST)
    with pytest.raises(ConfigError, match="needs a sparse base"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="full", sparse_adapter=True, progress=False, **FAST)
    with pytest.raises(ConfigError, match="summed over full fine-tuning"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="lora", importance=True, progress=False, **FAST)
    assert not (tmp_path / "x").exists()


def test_importance_survives_a_resume(tiny_llama, tmp_path):
    net, _ = tiny_llama
    callback = ImportanceCallback(net)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    callback.on_pre_optimizer_step(None, None, None)
    callback.save_checkpoint(tmp_path)
    resumed = ImportanceCallback(net)
    resumed.load_checkpoint(tmp_path)
    assert resumed.importance.steps == 1
    assert all(torch.equal(resumed.importance.scores[n], s) for n, s in callback.importance.scores.items())


def test_decoder_eftnas_recipe_end_to_end(tiny_llama_dir, tmp_path):
    data = load_recipe(RECIPE).model_dump()
    data["model"] = str(tiny_llama_dir)
    for st in data["stages"]:
        if st["stage"] in ("finetune", "supernet"):
            st["train"].update(max_steps=2, batch_size=8, max_length=48, save_steps=100)
        if st["stage"] == "search":
            st.update(trials=4, limit=8)
        if st["stage"] == "evaluate":
            st.update(limit=8, max_windows=1, seq_len=64)
    run = tmp_path / "run"
    paths = run_recipe(load_recipe(data), run, progress=False, log=lambda *_: None)
    teacher = _manifest(paths["teacher"])
    assert teacher["method"] == "full" and (paths["teacher"] / IMPORTANCE_FILE).is_file()
    sub = _manifest(paths["sub70"])
    assert sub["stage"] == "extract" and sub["metrics"]["macs_fraction"] <= 0.7 * 1.01
    assert sub["metrics"]["parameters"] < teacher["metrics"]["parameters"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "sub70"}
    assert all(m["n"] == 8 for m in metrics["models"].values())
