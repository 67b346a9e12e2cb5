"""Issue 20, item 8: lineage survives moving or copying a run directory as a whole; an input that changed
since is noticed; manifests written before inputs carried relative paths still load."""

import json
import os
import shutil

import pytest
import torch

from slimtune import api
from slimtune.artifacts import MANIFEST, recorded_path
from slimtune.errors import ArtifactError
from slimtune.models import load_model


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    """base -> sparse -> adapter, made from the run's parent directory with relative paths."""
    root = tmp_path_factory.mktemp("moved")
    shutil.copytree(tiny_llama_dir, root / "run" / "base")
    here = os.getcwd()
    os.chdir(root)
    try:
        api.sparsify("run/base", out="run/sparse", method="magnitude", sparsity=0.5, progress=False)
        api.finetune("run/sparse", out="run/adapter", rank=2, sparse_adapter=True, max_steps=2, batch_size=4,
                     progress=False)
    finally:
        os.chdir(here)
    return root / "run"


def _outputs(model_dir, adapter=None):
    net, tok = api.load_adapted(model_dir, adapter) if adapter else load_model(model_dir)
    with torch.no_grad():
        return net(tok("prices rose", return_tensors="pt")["input_ids"]).logits


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_run_still_finds_its_base(run, tmp_path, monkeypatch, how):
    moved = tmp_path / "elsewhere" / "run2"
    moved.parent.mkdir()
    shutil.copytree(run, moved)
    if how == "move":  # the original is gone
        original = run.parent / "gone"
        run.rename(original)
    try:
        monkeypatch.chdir(tmp_path / "elsewhere")  # neither the old working directory nor the old paths
        manifest = json.loads((moved / "adapter" / MANIFEST).read_text())
        assert manifest["config"]["model"] == "run/sparse"  # as given, relative to the old working directory
        assert manifest["inputs"]["model"]["relative"] == "../sparse"
        assert recorded_path(moved / "adapter", "model") == str(moved / "sparse")
        merged = api.merge(moved / "adapter", out=tmp_path / "merged")  # no --model: the base from the lineage
        merged_manifest = json.loads((merged / MANIFEST).read_text())
        assert merged_manifest["config"]["model"] == str(moved / "sparse")
        torch.testing.assert_close(_outputs(merged), _outputs(moved / "sparse", moved / "adapter"), rtol=0, atol=1e-5)
        # and the lineage still points to the sparse model's own input
        assert recorded_path(moved / "sparse", "model") == str(moved / "base")
    finally:
        if how == "move":
            original.rename(run)


def test_an_input_that_changed_since_is_refused(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "sparse" / "model.safetensors").write_bytes(b"\x00" * 16)  # another model now sits there
    # the recorded absolute path (the original run) still holds the right one: it is used
    assert recorded_path(copy / "adapter", "model") == str(run / "sparse")
    moved = tmp_path / "moved"
    copy.rename(moved)
    manifest = json.loads((moved / "adapter" / MANIFEST).read_text())
    manifest["inputs"]["model"]["absolute"] = str(tmp_path / "nowhere")
    (moved / "adapter" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="has changed since .*fingerprint differs"):
        api.merge(moved / "adapter", out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_rerun_stage_with_the_same_config_keeps_the_fingerprint(run, tmp_path, monkeypatch):
    """A recipe re-creates a stage after a kill (same config, new timings); what was made from it must still
    find it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "sparse")
    monkeypatch.chdir(tmp_path)
    api.sparsify("run/base", out="run/sparse", method="magnitude", sparsity=0.5, progress=False)
    manifest = json.loads((copy / "adapter" / MANIFEST).read_text())
    manifest["inputs"]["model"]["absolute"] = str(tmp_path / "nowhere")
    (copy / "adapter" / MANIFEST).write_text(json.dumps(manifest))
    assert recorded_path(copy / "adapter", "model") == str(copy / "sparse")


def test_old_manifests_without_relative_inputs_still_load(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "adapter" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["config"]["model"] = str(copy / "sparse")
    manifest["inputs"] = {"model": {"path": str(copy / "sparse"), "hash": "0123456789abcdef"}}  # the old format
    path.write_text(json.dumps(manifest))
    assert recorded_path(copy / "adapter", "model") == str(copy / "sparse")
    assert api.merge(copy / "adapter", out=tmp_path / "m").is_dir()
    del manifest["inputs"]
    path.write_text(json.dumps(manifest))
    assert recorded_path(copy / "adapter", "model") == str(copy / "sparse")
