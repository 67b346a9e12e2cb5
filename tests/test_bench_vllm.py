"""bench/vllm_serve.py skips cleanly where vLLM cannot run: it says why, writes it to --json and exits 0."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import vllm_serve  # noqa: E402


def test_why_skipped_names_what_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert "vLLM is not installed" in vllm_serve.why_skipped()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert vllm_serve.why_skipped() == "no CUDA GPU (vLLM's INT4 kernels run on a GPU)"


@pytest.mark.skipif(vllm_serve.why_skipped() is None, reason="this machine runs vLLM: the bench would run for real")
def test_the_bench_skips_with_exit_code_0_and_says_why(tmp_path):
    out = tmp_path / "v.json"
    done = subprocess.run([sys.executable, str(BENCH / "vllm_serve.py"), "--run", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("skipped: ")
    assert json.loads(out.read_text()) == {"skipped": vllm_serve.why_skipped()}
