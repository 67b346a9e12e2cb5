"""Issue 20, item 3: checkpoints resume only when complete and only for the same configuration; the loss
recorded after a resume covers the whole run."""

import json
import shutil

import pytest
import torch
from transformers import TrainerCallback

from slimtune import api
from slimtune.adapters import add_lora
from slimtune.checkpoints import MARKER
from slimtune.data import load_task
from slimtune.errors import ConfigError
from slimtune.models import load_model, target_modules
from slimtune.train import TrainConfig, train


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class _Steps(TrainerCallback):
    """The optimizer steps this process ran (a resumed run starts after its checkpoint)."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


def _run(model_dir, ckpt, callbacks=(), rank=4, task="polarity", **train_kw):
    model, tok = load_model(model_dir)
    add_lora(model, target_modules(model), r=rank, alpha=8, dropout=0.0, seed=0)
    config = TrainConfig(**{"max_steps": 6, "save_steps": 2, "batch_size": 4, "learning_rate": 1e-2,
                            "warmup_steps": 0, "seed": 1, "logging_steps": 1, **train_kw})
    steps = _Steps()
    metrics = train(model, tok, load_task(task).train, config, ckpt, callbacks=[steps, *callbacks], progress=False)
    return model, metrics, steps.steps


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    return _run(tiny_llama_dir, tmp_path_factory.mktemp("ref") / "ckpt")


def _interrupted(model_dir, ckpt, at=5):
    with pytest.raises(KeyboardInterrupt):
        _run(model_dir, ckpt, callbacks=[_StopAt(at)])
    assert (ckpt / "checkpoint-4" / MARKER).is_file()  # complete checkpoints carry the marker


def _assert_same_weights(a, b):
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("damage", ["partial", "empty", "truncated"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_complete_one(tiny_llama_dir, tmp_path, reference,
                                                                             damage):
    ckpt = tmp_path / "ckpt"
    _interrupted(tiny_llama_dir, ckpt)
    newest = ckpt / "checkpoint-6"
    if damage == "partial":  # killed after trainable.safetensors, before trainer_state.json
        newest.mkdir()
        shutil.copy(ckpt / "checkpoint-4" / "trainable.safetensors", newest)
    elif damage == "empty":
        newest.mkdir()
    else:  # the newest one complete but its weights cut short afterwards
        shutil.copytree(ckpt / "checkpoint-4", newest)
        marker = json.loads((newest / MARKER).read_text())
        (newest / MARKER).write_text(json.dumps({**marker, "step": 6}))
        data = (newest / "trainable.safetensors").read_bytes()
        (newest / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    model, metrics, steps = _run(tiny_llama_dir, ckpt)
    assert steps == [5, 6]  # resumed from checkpoint-4, neither a crash nor a restart from step 0
    assert metrics["steps"] == 6
    _assert_same_weights(reference[0], model)


def test_the_training_loss_after_a_resume_covers_the_whole_run(tiny_llama_dir, tmp_path, reference):
    ckpt = tmp_path / "ckpt"
    _interrupted(tiny_llama_dir, ckpt)
    _, metrics, steps = _run(tiny_llama_dir, ckpt)
    assert steps == [5, 6]
    assert metrics["train_loss"] == pytest.approx(reference[1]["train_loss"], rel=1e-5)
    assert [h["step"] for h in metrics["loss_history"]] == [1, 2, 3, 4, 5, 6]


def test_checkpoints_of_another_configuration_are_refused_or_replaced(tiny_llama_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    _interrupted(tiny_llama_dir, ckpt)
    for change in ({"rank": 2}, {"task": "bigbench:strategyqa"}, {"learning_rate": 1e-3}):
        with pytest.raises(ConfigError, match="written by another configuration"):
            _run(tiny_llama_dir, ckpt, **change)
    # settings that do not change what is computed keep the checkpoints usable
    _, _, steps = _run(tiny_llama_dir, ckpt, logging_steps=3, save_steps=3)
    assert steps == [5, 6]


def test_a_standalone_finetune_rerun_of_another_task_does_not_resume_silently(tiny_llama_dir, tmp_path, monkeypatch):
    import slimtune.train as train_mod

    out = tmp_path / "ad"
    real_train = train_mod.train
    monkeypatch.setattr("slimtune.finetuning.train", lambda *a, **k: real_train(*a, **{**k, "callbacks": [_StopAt(3)]}))
    kw = dict(rank=2, max_steps=4, save_steps=2, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        api.finetune(tiny_llama_dir, task="polarity", out=out, **kw)
    monkeypatch.setattr("slimtune.finetuning.train", real_train)
    assert (tmp_path / ".ad.checkpoints" / "checkpoint-2" / MARKER).is_file()
    for other in ({"task": "bigbench:strategyqa"}, {"rank": 3}):
        with pytest.raises(ConfigError, match="another configuration.*--overwrite"):
            api.finetune(tiny_llama_dir, out=out, **{**kw, "task": "polarity", **other})
    assert not out.exists()
    # --overwrite starts afresh; the same command resumes
    api.finetune(tiny_llama_dir, task="bigbench:strategyqa", out=out, overwrite=True, **kw)
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["config"]["task"] == "bigbench:strategyqa" and manifest["metrics"]["steps"] == 4
    assert not (tmp_path / ".ad.checkpoints").exists()


def test_old_checkpoints_are_rotated_only_after_the_new_one_is_complete(tiny_llama_dir, tmp_path, monkeypatch):
    import slimtune.checkpoints as ck

    seen = []
    real = ck.write_json_atomic

    def spy(path, data):  # when the marker is written, the previous checkpoint must still be there
        seen.append(sorted(p.name for p in path.parent.parent.iterdir()))
        real(path, data)

    monkeypatch.setattr(ck, "write_json_atomic", spy)
    _run(tiny_llama_dir, tmp_path / "ckpt", save_total_limit=1)
    assert seen == [["checkpoint-2"], ["checkpoint-2", "checkpoint-4"], ["checkpoint-4", "checkpoint-6"]]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-6"]
