"""Issue 20, items 5 and 10: non-finite values are refused (options, training loss, evaluation scores), and
the remaining tracebacks are one-line errors raised before the work."""

import json

import re

import pytest
import torch
from transformers import TrainerCallback

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError, NonFiniteError, TrainingError
from slimtune.evaluate import evaluate_model
from slimtune.models import load_model
from slimtune.recipe import load_recipe

TINY_TRAIN = ["--max-steps", "2", "--batch-size", "4"]


# ---- 5. finiteness -----------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--alpha", "inf"), ("--epochs", "inf"),
                                         ("--alpha", "nan"), ("--dropout", "nan"), ("--lr", "-inf")])
def test_cli_refuses_non_finite_numbers(tiny_llama_dir, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "ad"), f"{flag}={value}", *TINY_TRAIN])
    assert e.value.code == 2
    assert re.search(rf"argument {flag}(/--[a-z-]+)?: expected a finite number, got '{value}'", capsys.readouterr().err)
    assert not (tmp_path / "ad").exists()


@pytest.mark.parametrize("kw, message", [
    ({"learning_rate": float("inf")}, "learning_rate: Input should be a finite number"),
    ({"epochs": float("inf")}, "epochs: Input should be a finite number"),
    ({"weight_decay": float("nan")}, "weight_decay: Input should be a finite number"),
    ({"alpha": float("inf")}, "alpha: Input should be a finite number"),
    ({"alpha": float("nan")}, "alpha: Input should be a finite number"),
])
def test_api_refuses_non_finite_numbers_before_work(tiny_llama_dir, tmp_path, monkeypatch, kw, message):
    monkeypatch.setattr("slimtune.finetuning.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match=message):
        api.finetune(tiny_llama_dir, out=tmp_path / "ad", **kw)


@pytest.mark.parametrize("stage, message", [
    ({"name": "a", "stage": "finetune", "train": {"learning_rate": float("inf")}}, "learning_rate: Input should be a finite"),
    ({"name": "a", "stage": "finetune", "alpha": float("inf")}, "stages[0].alpha: Input should be a finite number"),
    ({"name": "q", "stage": "quantize", "damp": float("nan")}, "stages[0]: option damp must be a number in [0.0, 1000000.0], got nan"),
    ({"name": "a", "stage": "finetune", "train": {"epochs": float("inf")}}, "epochs: Input should be a finite"),
])
def test_recipes_refuse_non_finite_numbers(tiny_llama_dir, stage, message):
    with pytest.raises(ConfigError) as e:
        load_recipe({"model": str(tiny_llama_dir), "stages": [stage]})
    assert message in str(e.value)


def test_recipe_yaml_inf_is_refused(tiny_llama_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_llama_dir}\nstages:\n  - {{name: a, stage: finetune, train: {{learning_rate: .inf}}}}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "learning_rate: Input should be a finite number" in capsys.readouterr().err


class _Poison(TrainerCallback):
    """Puts a nan into the adapter after step 2, as a diverging run would."""

    def __init__(self, model):
        self.model = model

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            with torch.no_grad():
                next(p for p in self.model.parameters() if p.requires_grad).fill_(float("nan"))


def test_training_stops_with_a_clear_error_when_the_loss_becomes_non_finite(tiny_llama_dir, tmp_path):
    from slimtune.adapters import add_lora
    from slimtune.data import load_task
    from slimtune.models import target_modules
    from slimtune.train import TrainConfig, train

    model, tok = load_model(tiny_llama_dir)
    add_lora(model, target_modules(model), r=2, alpha=4, dropout=0.0, seed=0)
    config = TrainConfig(max_steps=5, batch_size=4, save_steps=2, warmup_steps=0)
    with pytest.raises(TrainingError, match=r"the training loss became nan at step 3; training stopped"):
        train(model, tok, load_task("polarity").train, config, tmp_path / "ckpt", callbacks=[_Poison(model)],
              progress=False)


@pytest.fixture(scope="module")
def nan_model(tiny_llama_dir):
    model, tok = load_model(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    return model, tok


def test_evaluation_refuses_non_finite_scores(nan_model):
    model, tok = nan_model
    with pytest.raises(NonFiniteError, match="log-likelihoods are not finite .* no accuracy to report"):
        evaluate_model(model, tok, task="polarity", limit=4, progress=False)
    with pytest.raises(NonFiniteError, match="no perplexity to report"):
        evaluate_model(model, tok, task=None, text="the market rose " * 200, seq_len=64, max_windows=1,
                       progress=False)
    with pytest.raises(NonFiniteError, match="outputs are not finite"):
        evaluate_model(model, tok, task="gsm_symbolic", limit=2, progress=False)


def test_a_nan_adapter_does_not_score(tiny_llama_dir, tmp_path, capsys):
    ad = api.finetune(tiny_llama_dir, out=tmp_path / "ad", rank=2, max_steps=1, batch_size=4, progress=False)
    from safetensors.torch import load_file, save_file

    weights = load_file(ad / "adapter_model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, ad / "adapter_model.safetensors")
    assert main(["evaluate", "--model", str(tiny_llama_dir), "--adapter", str(ad), "--limit", "4"]) == 2
    assert "not finite" in capsys.readouterr().err


# ---- 10. one-line errors before the work -------------------------------------------------------

@pytest.fixture
def no_scoring(monkeypatch):
    def fail(*a, **k):
        pytest.fail("scored before checking the arguments")

    for name in ("multiple_choice", "generation_accuracy", "perplexity"):
        monkeypatch.setattr(f"slimtune.evaluate.{name}", fail)


def test_evaluate_out_is_checked_before_scoring(tiny_llama_dir, tmp_path, capsys, no_scoring):
    (tmp_path / "dir").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    base = ["evaluate", "--model", str(tiny_llama_dir), "--limit", "4", "--out"]
    assert main([*base, str(tmp_path / "dir")]) == 2
    assert "is a directory; evaluate writes one JSON file" in capsys.readouterr().err
    assert main([*base, str(notes)]) == 2
    assert "exists and is not a slimtune evaluation result" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    assert main([*base, str(notes / "r.json")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_an_earlier_result_file_is_replaced(tiny_llama_dir, tmp_path):
    out = tmp_path / "r.json"
    api.evaluate(tiny_llama_dir, limit=2, out=out, progress=False)
    first = json.loads(out.read_text())
    api.evaluate(tiny_llama_dir, limit=3, out=out, progress=False)
    assert first["n"] == 2 and json.loads(out.read_text())["n"] == 3


def test_seq_len_above_the_context_is_refused_before_the_task_is_scored(tiny_llama_dir, capsys, no_scoring):
    assert main(["evaluate", "--model", str(tiny_llama_dir), "--perplexity-text", "wiki", "--seq-len", "4096",
                 "--limit", "4"]) == 2
    assert "seq_len 4096 exceeds the model's context (512 positions)" in capsys.readouterr().err


def _other_shape(tiny_llama_dir, out):
    """A Llama of another width with the same tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(out)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out)
    return out


def test_merging_onto_a_model_of_another_shape_is_a_clear_error(tiny_llama_dir, tmp_path, capsys):
    ad = api.finetune(tiny_llama_dir, out=tmp_path / "ad", rank=2, max_steps=1, batch_size=4, progress=False)
    other = _other_shape(tiny_llama_dir, tmp_path / "other")
    assert main(["merge", "--adapter", str(ad), "--model", str(other), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model: it adapts model.layers.0." in err and "linear layer, and the model has Linear" in err
    bert = tmp_path / "bert"
    from slimtune.models import build_tiny_model

    build_tiny_model(bert, arch="bert")
    assert main(["merge", "--adapter", str(ad), "--model", str(bert), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "the model has no such module" in err
    assert not (tmp_path / "m").exists()


def test_sparsifying_a_quantized_model_says_so(qa_stack, tmp_path, capsys):
    assert main(["sparsify", "--model", str(qa_stack["int4"]), "--method", "magnitude",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "the model is quantized" in err and "INT4" in err and "sparsify the float model, then quantize" in err
    assert not (tmp_path / "s").exists()
