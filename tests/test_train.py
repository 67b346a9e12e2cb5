import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from slimtune import api
from slimtune.adapters import add_lora
from slimtune.architectures import architecture_of
from slimtune.data import load_task
from slimtune.data.tasks import Example
from slimtune.errors import ArtifactError, ConfigError
from slimtune.models import load_model, target_modules
from slimtune.train import TrainConfig, tokenize_example, train


def test_labels_mask_the_prompt(tiny_llama):
    _, tok = tiny_llama
    ex = Example("Review: a fine film\nSentiment:", (" negative", " positive"), 1)
    item = tokenize_example(ex, tok, max_length=64, add_eos=False)
    n_prompt = len(tok(ex.prompt)["input_ids"])
    assert item["labels"][:n_prompt] == [-100] * n_prompt
    assert tok.decode(item["input_ids"][n_prompt:]) == " positive"
    cut = tokenize_example(ex, tok, max_length=4, add_eos=True)
    assert len(cut["input_ids"]) == 4 and cut["input_ids"][-1] == tok.eos_token_id


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt


def _run(model_dir, ckpt, callbacks=None):
    model, tok = load_model(model_dir)
    add_lora(model, target_modules(model), r=4, alpha=8, dropout=0.0, seed=0)
    config = TrainConfig(max_steps=5, save_steps=2, batch_size=4, learning_rate=1e-2, warmup_steps=0, seed=1)
    metrics = train(model, tok, load_task("polarity").train, config, ckpt, callbacks=callbacks, progress=False)
    return model, metrics


def test_resume_after_interruption_equals_uninterrupted_run(tiny_llama_dir, tmp_path):
    reference, _ = _run(tiny_llama_dir, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama_dir, tmp_path / "b", callbacks=[_Interrupt()])
    assert (tmp_path / "b" / "checkpoint-2" / "trainable.safetensors").is_file()
    # checkpoints hold only the adapter, not the base model
    assert set(load_file(tmp_path / "b" / "checkpoint-2" / "trainable.safetensors")) == {
        n for n, p in reference.named_parameters() if p.requires_grad}
    resumed, metrics = _run(tiny_llama_dir, tmp_path / "b")
    assert metrics["steps"] == 5
    for (n, p), (_, q) in zip(reference.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_finetune_lowers_training_loss_and_writes_artifact(tiny_llama_dir, tmp_path):
    out = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "ad", rank=4, alpha=8, epochs=3,
                       batch_size=8, learning_rate=3e-3, logging_steps=5, progress=False)
    manifest = json.loads((out / "slimtune.json").read_text())
    losses = [h["loss"] for h in manifest["metrics"]["loss_history"]]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert manifest["stage"] == "finetune" and manifest["config"]["rank"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    assert not (tmp_path / ".ad.checkpoints").exists()
    merged = api.merge(out, out=tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()


def test_finetune_rejects_bad_input_before_work(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", learning_rate=-1)
    with pytest.raises(ConfigError, match="matches no linear module"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", targets=["nope"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        api.finetune(tiny_llama_dir, out=tmp_path / "exists")
    with pytest.raises(ConfigError, match="unknown_key: Extra inputs are not permitted"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", unknown_key=1)
    assert not (tmp_path / "x").exists()


def _run_nls(model_dir, ckpt, callbacks=()):
    from slimtune.nas import ElasticSampler, ElasticSpace

    model, tok = load_model(model_dir)
    names = target_modules(model)
    add_lora(model, names, r=4, alpha=8, dropout=0.0, seed=0, rank_space=[4, 3, 2])
    sampler = ElasticSampler(model, ElasticSpace.build(names, [4, 3, 2], "shears", architecture_of(model)), seed=7)
    config = TrainConfig(max_steps=5, save_steps=2, batch_size=4, learning_rate=1e-2, warmup_steps=0, seed=1)
    train(model, tok, load_task("polarity").train, config, ckpt, callbacks=[sampler, *callbacks], progress=False)
    return model, sampler.history


def test_interrupted_nls_run_resumes_the_same_sub_adapters_and_history(tiny_llama_dir, tmp_path):
    reference, history = _run_nls(tiny_llama_dir, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run_nls(tiny_llama_dir, tmp_path / "b", callbacks=[_Interrupt()])
    resumed, resumed_history = _run_nls(tiny_llama_dir, tmp_path / "b")
    assert [h["step"] for h in resumed_history] == [1, 2, 3, 4, 5]
    assert [h["config"] for h in resumed_history] == [h["config"] for h in history]
    assert len({json.dumps(h["config"], sort_keys=True) for h in history}) > 1  # it did sample
    for (n, p), (_, q) in zip(reference.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
