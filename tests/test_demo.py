import json

import pytest

from slimtune.demo import run_demo


@pytest.mark.slow
def test_demo_fine_tuning_raises_test_accuracy(tmp_path):
    rows = run_demo(tmp_path / "demo")
    before, after = rows
    assert after["acc"] >= before["acc"] + 0.08, rows
    assert after["perplexity"] < 2 * before["perplexity"]  # adapting to the task did not wreck the LM
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["rows"] == rows
    # re-running skips the finished stages and reproduces the table
    assert run_demo(tmp_path / "demo") == rows
