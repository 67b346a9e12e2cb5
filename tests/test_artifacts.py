import json

import pytest

from slimtune.artifacts import MANIFEST, atomic_dir, read_manifest, write_manifest
from slimtune.errors import ArtifactError


def test_atomic_dir_publishes_only_on_success(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "w.bin").write_bytes(b"x")
        write_manifest(tmp, stage="test", method="m", config={"a": 1}, metrics={"ppl": 2.0}, seed=3)
    manifest = read_manifest(out)
    assert manifest["stage"] == "test" and manifest["config"] == {"a": 1} and manifest["seed"] == 3
    assert "torch" in manifest["versions"]


def test_existing_output_is_not_touched(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(ArtifactError, match="already exists.*--overwrite"):
        with atomic_dir(out):
            pass
    assert (out / "keep").read_text() == "old"
    # --overwrite replaces a slimtune artifact only, never a folder of the user's own (issue 20)
    with pytest.raises(ArtifactError, match="replaces only a slimtune artifact"):
        with atomic_dir(out, overwrite=True):
            pass
    assert (out / "keep").read_text() == "old"
    write_manifest(out, stage="test", method="m", config={})
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"]


def test_damaged_manifest(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="damaged"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="not a slimtune artifact"):
        read_manifest(tmp_path / "nothing")


def test_artifact_load_gives_typed_fields_and_finds_moved_inputs(tmp_path):
    import shutil
    import time

    from slimtune.artifacts import Artifact

    run = tmp_path / "run"
    base = run / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    out = run / "adapter"
    out.mkdir()
    lineage = [{"stage": "finetune", "use": "train", "ids": ["a"]}]
    write_manifest(out, stage="finetune", method="nls", config={"model": str(base), "task": "polarity", "split_seed": 3},
                   inputs={"model": str(base)}, metrics={"loss": 1.5}, started=time.time(), seed=42, lineage=lineage)
    art = Artifact.load(out)
    assert (art.stage, art.method, art.task, art.split_seed, art.seed) == ("finetune", "nls", "polarity", 3, 42)
    assert art.metrics == {"loss": 1.5} and art.lineage == lineage and art.wall_time_s >= 0
    assert art.base == str(base)
    shutil.move(str(run), str(tmp_path / "moved"))  # the run directory moved as a whole
    assert Artifact.load(tmp_path / "moved" / "adapter").base == str(tmp_path / "moved" / "base")
    assert Artifact.find(tmp_path / "moved" / "base") is None and Artifact.find("smollm2-135m") is None
    (tmp_path / "moved" / "adapter" / MANIFEST).write_text("[]")
    with pytest.raises(ArtifactError, match="damaged"):
        Artifact.find(tmp_path / "moved" / "adapter")
