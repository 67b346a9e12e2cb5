"""Issue 20, the goal: `kill -9` at any point of a recipe, then the same command again, completes with the
results of an uninterrupted run, with no manual cleanup and no stray temporary directory."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimtune.recipe import run_recipe

RECIPE = {"task": "polarity", "stages": [
    {"name": "sparse", "stage": "sparsify", "method": "magnitude", "sparsity": 0.5},
    {"name": "adapter", "stage": "finetune", "rank": 2, "sparse_adapter": True,
     "train": {"max_steps": 6, "save_steps": 2, "batch_size": 4, "warmup_steps": 0, "learning_rate": 1e-2}},
    {"name": "final", "stage": "merge"},
    {"name": "eval", "stage": "evaluate", "models": ["model", "final"], "limit": 4, "max_windows": 1, "seq_len": 64}]}

# Each kill point: where the process kills itself with SIGKILL (no cleanup code of ours or Python's runs).
KILLER = textwrap.dedent("""
    import json, os, signal, sys
    point, model, run = sys.argv[1:4]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "checkpoint":  # checkpoint-4: weights and optimizer written, trainer state and marker not
        from transformers import Trainer
        real_rng = Trainer._save_rng_state

        def rng(self, output_dir):
            if self.state.global_step == 4:
                die()
            real_rng(self, output_dir)
        Trainer._save_rng_state = rng
    elif point == "artifact":  # inside the merge stage's temporary directory, before its rename
        import slimtune.artifacts as artifacts
        real_manifest = artifacts.write_manifest

        def manifest(directory, **kw):
            if kw["stage"] == "merge":
                die()
            return real_manifest(directory, **kw)
        artifacts.write_manifest = manifest
        import slimtune.api as api
        api.write_manifest = manifest
    elif point == "published":  # the merge artifact renamed into place, its state not yet marked done
        import slimtune.recipe as recipe
        real_stage = recipe._run_stage

        def stage(api, st, *a, **kw):
            real_stage(api, st, *a, **kw)
            if st.name == "final":
                die()
        recipe._run_stage = stage
    from slimtune.recipe import load_recipe, run_recipe
    run_recipe(load_recipe({**json.loads(os.environ["RECIPE"]), "model": model}), run, progress=False, log=print)
""")


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    from slimtune.recipe import load_recipe

    run = tmp_path_factory.mktemp("ref") / "run"
    run_recipe(load_recipe({**RECIPE, "model": str(tiny_llama_dir)}), run, progress=False, log=_quiet)
    return run


def _metrics(run: Path) -> dict:
    results = json.loads((run / "eval" / "results.json").read_text())
    return {m: (r["acc"], r["perplexity"]) for m, r in results.items()}


@pytest.mark.parametrize("point", ["checkpoint", "artifact", "published"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tiny_llama_dir, reference, tmp_path, point):
    from slimtune.recipe import load_recipe

    run = tmp_path / "run"
    env = {**os.environ, "RECIPE": json.dumps(RECIPE), "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLER, point, str(tiny_llama_dir), str(run)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = {"checkpoint": run / ".adapter.checkpoints" / "checkpoint-4",
                 "artifact": next(run.glob(".final.tmp-*"), None), "published": run / "final"}[point]
    assert leftovers is not None and leftovers.exists()  # the kill happened where it was meant to
    log = []
    run_recipe(load_recipe({**RECIPE, "model": str(tiny_llama_dir)}), run, progress=False, log=log.append)
    if point == "checkpoint":
        assert "[2/4] finetune adapter: resuming" in log
    manifest = json.loads((run / "adapter" / "slimtune.json").read_text())
    ref_manifest = json.loads((reference / "adapter" / "slimtune.json").read_text())
    assert manifest["metrics"]["steps"] == 6
    assert manifest["metrics"]["train_loss"] == pytest.approx(ref_manifest["metrics"]["train_loss"], rel=1e-5)
    for rel in ("adapter/slimtune_adapter.safetensors", "final/model.safetensors"):
        ours, theirs = load_file(run / rel), load_file(reference / rel)
        assert ours.keys() == theirs.keys()
        for k in ours:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=f"{rel}: {k}")
    for m, (acc, ppl) in _metrics(run).items():
        ref_acc, ref_ppl = _metrics(reference)[m]
        assert acc == ref_acc and ppl == pytest.approx(ref_ppl, rel=1e-4)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".recipe"]  # nothing stray
    assert not list((run / ".recipe").glob(".*"))
