"""The benches' --keep directory: artifacts are reused by name, so a task whose data changed is refused."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _common  # noqa: E402


def test_a_keep_directory_refuses_a_task_whose_examples_changed(tmp_path):
    stage = _common.stage_runner(tmp_path, ["polarity"])
    recorded = json.loads((tmp_path / "tasks.json").read_text())
    assert recorded == {"polarity": _common.task_fingerprint("polarity")}
    made = []
    assert stage("a", lambda p: (made.append(p), p.mkdir())) == tmp_path / "a"
    _common.stage_runner(tmp_path, ["polarity"])("a", lambda p: made.append(p))  # same data: reused, not made
    assert made == [tmp_path / "a"]

    (tmp_path / "tasks.json").write_text(json.dumps({"polarity": "0" * 40}))  # as if its examples had changed
    with pytest.raises(SystemExit, match=r"other data of polarity .*give a new --keep"):
        _common.stage_runner(tmp_path, ["polarity"])
    assert (tmp_path / "a").exists()
