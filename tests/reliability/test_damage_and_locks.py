"""Issue 20, items 6 and 7: damaged artifacts are noticed (recipe skips, inspect, evaluate); one writer per run
directory; search workers sharing a study do not share a sampler seed."""

import json

import pytest

from slimtune import api
from slimtune.artifacts import check_artifact, check_safetensors
from slimtune.cli import main
from slimtune.errors import ArtifactError, ModelLoadError
from slimtune.locking import claim_worker_slot, run_lock
from slimtune.recipe import load_recipe, run_recipe


def _recipe(model):
    return load_recipe({"model": str(model), "task": "polarity", "stages": [
        {"name": "sparse", "stage": "sparsify", "method": "magnitude", "sparsity": 0.5},
        {"name": "adapter", "stage": "finetune", "rank": 2, "sparse_adapter": True,
         "train": {"max_steps": 2, "save_steps": 2, "batch_size": 4}},
        {"name": "final", "stage": "merge"}]})


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    run_recipe(_recipe(tiny_llama_dir), run, progress=False, log=lambda *_: None)
    return run


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


# ---- 6. damaged artifacts ----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated weights", "invalid manifest", "missing directory"])
def test_a_rerun_redoes_a_damaged_stage_instead_of_skipping_it(tiny_llama_dir, finished_run, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    reference = (run / "final" / "model.safetensors").read_bytes()
    if damage == "truncated weights":
        _truncate(run / "sparse" / "model.safetensors")
    elif damage == "invalid manifest":
        (run / "sparse" / "slimtune.json").write_text("{\"stage\": ")
    else:
        shutil.rmtree(run / "sparse")
    log = []
    run_recipe(_recipe(tiny_llama_dir), run, progress=False, log=log.append)
    assert log[0].startswith("[1/3] sparsify sparse: damaged (") and "running it again" in log[0]
    assert "[2/3] finetune adapter: complete, skipped" in log  # same config, undamaged: kept
    check_artifact(run / "sparse")
    assert (run / "final" / "model.safetensors").read_bytes() == reference


def test_inspect_and_evaluate_of_a_truncated_file_give_the_same_clear_error(finished_run, tmp_path, capsys):
    import shutil

    model = tmp_path / "sparse"
    shutil.copytree(finished_run / "sparse", model)
    _truncate(model / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors is corrupt or truncated"):
        check_safetensors(model / "model.safetensors")
    assert main(["inspect", str(model)]) == 2
    inspect_err = capsys.readouterr().err
    with pytest.raises(ModelLoadError):
        api.evaluate(model, limit=2, progress=False)
    assert main(["evaluate", "--model", str(model), "--limit", "2"]) == 2
    evaluate_err = capsys.readouterr().err
    reason = f"{model / 'model.safetensors'} is corrupt or truncated (it holds"
    assert reason in inspect_err and reason in evaluate_err
    assert "Traceback" not in inspect_err + evaluate_err
    adapter = tmp_path / "adapter"
    shutil.copytree(finished_run / "adapter", adapter)
    _truncate(adapter / "slimtune_adapter.safetensors")
    assert main(["inspect", str(adapter)]) == 2
    assert "slimtune_adapter.safetensors is corrupt or truncated" in capsys.readouterr().err


def test_a_safetensors_header_cut_short_is_named(tmp_path):
    for content in (b"", b"\x10\x00", b"\xff" * 8 + b"{}", (5).to_bytes(8, "little") + b"[1,2]"):
        (tmp_path / "w.safetensors").write_bytes(content)
        with pytest.raises(ArtifactError, match="corrupt or truncated"):
            check_safetensors(tmp_path / "w.safetensors")


# ---- 7. one writer per run directory; distinct search workers ----------------------------------

def test_a_second_run_on_the_same_directory_stops_with_a_clear_message(tiny_llama_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".recipe").mkdir(parents=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - {name: sparse, stage: sparsify, method: magnitude}\n")
    with run_lock(run / ".recipe"):  # another `slimtune run` holds it (flock conflicts across open files)
        with pytest.raises(ArtifactError, match=r"run directory .* is in use by another slimtune process \(pid "):
            run_recipe(load_recipe({"model": str(tiny_llama_dir), "stages": [
                {"name": "sparse", "stage": "sparsify", "method": "magnitude"}]}), run, log=lambda *_: None)
        assert main(["run", str(recipe), "--out", str(run), "--model", str(tiny_llama_dir)]) == 2
        assert "is in use by another slimtune process" in capsys.readouterr().err
        assert not (run / "sparse").exists() and not (run / ".recipe" / "sparse.json").exists()
    # released: the run goes ahead
    assert main(["run", str(recipe), "--out", str(run), "--model", str(tiny_llama_dir)]) == 0
    assert (run / "sparse" / "slimtune.json").is_file()


def test_a_run_lock_held_by_a_killed_process_is_free(tmp_path):
    import subprocess
    import sys

    (tmp_path / ".recipe").mkdir()
    code = ("import os, sys; from slimtune.locking import run_lock; cm = run_lock(sys.argv[1]); cm.__enter__(); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / ".recipe")], check=False)
    with run_lock(tmp_path / ".recipe"):
        pass


def test_search_workers_on_one_study_get_distinct_sampler_seeds(tmp_path):
    first, second = claim_worker_slot(tmp_path), claim_worker_slot(tmp_path)
    assert (first.index, second.index) == (0, 1)
    assert first.seed(7) == 7  # one worker alone reproduces the unshared search
    assert second.seed(7) != 7 and second.seed(7) == second.seed(7)
    first.release()
    again = claim_worker_slot(tmp_path)  # a resumed worker takes the free slot again
    assert again.index == 0 and again.seed(7) == 7
    shared_a = claim_worker_slot(tmp_path / "a", shared_storage=True)
    shared_b = claim_worker_slot(tmp_path / "b", shared_storage=True)
    assert shared_a.index == shared_b.index == 0 and shared_a.seed(7) != shared_b.seed(7)


def test_two_workers_with_the_same_seed_sample_different_configurations(tmp_path):
    import optuna

    from slimtune.nas.search import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    picks = []
    for slot in (claim_worker_slot(tmp_path), claim_worker_slot(tmp_path)):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler("random", slot.seed(0), None))
        trial = study.ask()
        picks.append([trial.suggest_categorical(f"g{i}", [2, 3, 4, 5]) for i in range(8)])
    assert picks[0] != picks[1]
