"""Issue 20, items 1, 2 and 9: paths never escape the run directory, --overwrite replaces only slimtune
artifacts, and left-overs of killed writes are cleaned by the next run of their stage."""

import json
import os
import subprocess
import sys

import pytest

from slimtune import api
from slimtune.artifacts import atomic_dir, check_output_dir, write_manifest
from slimtune.cli import main
from slimtune.errors import ArtifactError, ConfigError
from slimtune.guards import inside, remove_inside
from slimtune.recipe import load_recipe, run_recipe


def _quiet(*_):
    pass


def _sentinel(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    return tmp_path / "precious.txt"


# ---- 1. names and paths stay inside the run directory -------------------------------------------

@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "../up", "/abs", "a\\b", ""])
def test_stage_names_that_could_leave_the_run_directory_are_refused(tiny_llama_dir, tmp_path, name):
    precious = _sentinel(tmp_path)
    stage = {"name": name, "stage": "search"} if name == ".." else {"name": name, "stage": "sparsify"}
    stages = [{"name": "ad", "stage": "finetune", "adapter": "nls"}, stage] if name == ".." else [stage]
    with pytest.raises(ConfigError, match=r"stages\[\d\]\.name: .*is not allowed"):
        run_recipe(load_recipe({"model": str(tiny_llama_dir), "stages": stages}), tmp_path / "run", log=_quiet)
    assert precious.read_text() == "user data" and not (tmp_path / "run").exists()


def test_names_with_inner_dots_stay_valid(tiny_llama_dir):
    recipe = load_recipe({"model": str(tiny_llama_dir), "stages": [{"name": "sparse-0.5_v1", "stage": "sparsify"}]})
    assert recipe.stages[0].name == "sparse-0.5_v1"


def test_a_stage_directory_linked_outside_the_run_is_never_written_or_removed(tiny_llama_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "sp").symlink_to(outside)
    recipe = load_recipe({"model": str(tiny_llama_dir), "stages": [
        {"name": "sp", "stage": "sparsify", "method": "magnitude"}]})
    with pytest.raises(ArtifactError, match="outside the run directory"):
        run_recipe(recipe, run, progress=False, log=_quiet)
    assert (outside / "keep.txt").read_text() == "mine" and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_inside_and_remove_inside(tmp_path):
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    for bad in (run, run / "..", run / "a" / ".." / "..", tmp_path / "other"):
        with pytest.raises(ArtifactError, match="outside the run directory"):
            remove_inside(run, bad)
    assert inside(run, run / "a" / "x") == run / "a" / "x"
    remove_inside(run, run / "a")
    assert not (run / "a").exists() and run.is_dir()


@pytest.mark.parametrize("out", [".", "..", "a/..", "/"])
def test_an_output_path_must_name_a_directory(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    _sentinel(tmp_path)
    with pytest.raises(ArtifactError):
        check_output_dir(out, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "user data"


# ---- 2. --overwrite replaces slimtune artifacts and empty directories only ---------------------

def test_overwrite_refuses_a_users_folder_before_any_work(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    monkeypatch.setattr("slimtune.api.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr("slimtune.finetuning.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for call in (lambda: api.sparsify(tiny_llama_dir, out=mine, method="magnitude", overwrite=True),
                 lambda: api.quantize(tiny_llama_dir, out=mine, method="rtn", overwrite=True),
                 lambda: api.finetune(tiny_llama_dir, out=mine, overwrite=True)):
        with pytest.raises(ArtifactError, match="replaces only a slimtune artifact .* or an empty directory"):
            call()
    assert main(["sparsify", "--model", str(tiny_llama_dir), "--method", "magnitude", "--out", str(mine),
                 "--overwrite"]) == 2
    assert "replaces only a slimtune artifact" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_overwrite_replaces_an_artifact_or_an_empty_directory(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    with atomic_dir(art, overwrite=True) as tmp:  # empty directory
        write_manifest(tmp, stage="test", method="a", config={})
    with atomic_dir(art, overwrite=True) as tmp:  # an artifact
        write_manifest(tmp, stage="test", method="b", config={})
    assert json.loads((art / "slimtune.json").read_text())["method"] == "b"
    (art / "slimtune.json").write_text("[1, 2]")  # not a manifest: not ours to replace
    with pytest.raises(ArtifactError, match="replaces only"):
        check_output_dir(art, overwrite=True)


# ---- 9. left-overs of killed writes ------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_writes_are_removed_by_the_next_run_of_the_stage(tiny_llama_dir, tmp_path):
    dead = _dead_pid()
    left = [tmp_path / f".sp.tmp-{dead}-0badc0de", tmp_path / ".sp.tmp-1a2b3c4d",  # this and the older naming
            tmp_path / f".sp.old-{dead}-12345678"]
    for d in left:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".sp.tmp-{os.getppid()}-feedbeef"  # a writer that is still running: kept
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead}-00000000"  # another stage's: left to that stage
    other.mkdir()
    api.sparsify(tiny_llama_dir, out=tmp_path / "sp", method="magnitude", progress=False)
    assert not any(d.exists() for d in left) and live.is_dir() and other.is_dir()
    assert (tmp_path / "sp" / "slimtune.json").is_file()


def test_a_recipe_run_sweeps_its_run_directory(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    (run / ".recipe").mkdir(parents=True)
    half_state = run / ".recipe" / f".sp.json.tmp-{_dead_pid()}-abcdef01"
    half_state.write_text("{")
    half_stage = run / f".sp.tmp-{_dead_pid()}-abcdef02"
    half_stage.mkdir()
    recipe = load_recipe({"model": str(tiny_llama_dir), "stages": [
        {"name": "sp", "stage": "sparsify", "method": "magnitude"}]})
    run_recipe(recipe, run, progress=False, log=_quiet)
    assert not half_state.exists() and not half_stage.exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".recipe"]
