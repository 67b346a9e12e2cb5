"""Pieces shared by the benchmarks: for those that compare slimtune with llm-compressor (bench/sparsify.py,
bench/quantize.py) the llm-compressor venv, the worker environment and result parsing, the one
evaluator (slimtune's perplexity on the Wikipedia excerpt) and table formatting; for the pipelines
(bench/sqft.py, eftnas.py, lonas.py, svd_vs_nls.py) the reusable stage runner and cached evaluations.

The bench scripts run as `python bench/X.py`, so this directory is sys.path[0] and they import
this module as `_common` (each script also puts its own directory on sys.path, for other ways in).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path.home() / ".cache" / "slimtune" / "bench-venvs" / "llmcompressor-0.14"
LLMC_REQS = ["torch==2.13.0", "llmcompressor==0.14.*"]


def demo_model(run_dir: Path) -> str:
    """The base model a `slimtune demo` run directory was made from (its recorded recipe's `model`)."""
    from slimtune.artifacts import RECIPE_FILE, STATE_DIR

    return json.loads((Path(run_dir) / STATE_DIR / RECIPE_FILE).read_text())["model"]


def stage_runner(work: Path, tasks=()):
    """stage(name, make) -> work/name, made by make(path) unless it exists: a re-run with the same --keep
    reuses every finished artifact (slimtune writes them atomically, so one that exists is complete).
    Artifacts and cached evaluations are known by name only, so the data of each task in `tasks` is
    fingerprinted into work/tasks.json and a later run whose task of the same name holds other examples
    (a suite whose members changed) is refused before anything stale is reused."""
    _check_task_data(work, tasks)

    def stage(name: str, make) -> Path:
        path = work / name
        if not path.exists():
            t0 = time.time()
            make(path)
            print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
        return path

    return stage


def cached_result(cache: Path | None, key: dict, compute) -> dict:
    """compute()'s result (an evaluation, with its per-example scores), stored at `cache` with the settings
    `key` it was made with and reused while they are the same; cache None: computed, not stored."""
    from slimtune.artifacts import write_json_atomic

    cached = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if cached.get("key") == key:
        return cached["result"]
    result = compute()
    if cache is not None:
        write_json_atomic(cache, {"key": key, "result": result})
    return result


def pooled_result(results: list[dict]) -> dict:
    """Several runs' results on the same examples (one per seed) as one: per example the mean score."""
    import numpy as np

    ids = results[0]["ids"]
    if any(r["ids"] != ids for r in results):
        raise SystemExit("the seeds' results were scored on different examples")
    return {**results[0], "scores": list(np.mean([r["scores"] for r in results], axis=0))}


def pooled_cache(paths: list[Path]) -> dict:
    """The `cached_result` files of several runs (one per seed) of the same evaluation, pooled (`pooled_result`);
    refused when one is missing or they were made with different settings."""
    runs = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: no cached evaluation; run the bench with --keep {path.parent} first")
        runs.append(json.loads(path.read_text()))
    if any(r["key"] != runs[0]["key"] for r in runs):
        raise SystemExit(f"{paths[0].name}: the runs were scored with different settings ({[r['key'] for r in runs]})")
    return pooled_result([r["result"] for r in runs])


def score_with_ci(result: dict) -> tuple[float, list[float]]:
    """(accuracy, 95% bootstrap interval) of a result's per-example scores (a suite: the macro average)."""
    from slimtune.evaluate.intervals import grouped, macro_ci, mean_ci

    r = macro_ci(grouped(result["scores"], result["members"])) if result.get("members") else mean_ci(result["scores"])
    return r["mean"], r["ci"]


def task_fingerprint(spec: str) -> str:
    """A hash of the ids in each split of a task (split seed 0): it changes when the task's data does."""
    from slimtune.data import load_task

    task = load_task(spec)
    ids = {split: [e.id for e in task.split(split)] for split in ("train", "validation", "test")}
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()


def _check_task_data(work: Path, tasks) -> None:
    from slimtune.artifacts import write_json_atomic

    record = work / "tasks.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    now = {spec: task_fingerprint(spec) for spec in tasks}
    changed = sorted(spec for spec, fp in now.items() if known.get(spec, fp) != fp)
    if changed:
        raise SystemExit(f"{work} holds artifacts made from other data of {', '.join(changed)} (its examples changed "
                         "since): give a new --keep directory")
    if now.keys() - known.keys():
        write_json_atomic(record, {**known, **now})


def add_common_args(ap, models_kept: str) -> None:
    """The options bench/sparsify.py and bench/quantize.py share (model, calibration, evaluation, runs)."""
    import argparse

    ap.add_argument("--model", default="smollm2-135m", help="model spec for slimtune.models.load_model")
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=16, help="calibration sequences (news text)")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration and evaluation window length")
    ap.add_argument("--windows", type=int, default=8, help="perplexity windows of the Wikipedia excerpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-llmc", action="store_true", help="slimtune only")
    ap.add_argument("--with-llmc", action="store_true", help="with --quick: run the llm-compressor side too")
    ap.add_argument("--keep", default=None, help=f"keep the {models_kept} directories here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write all raw results to this JSON file")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)


def setup_run(args):
    """(TemporaryDirectory, work dir): --keep or a temp dir. --quick switches to a tiny random Llama and
    small sizes (slimtune only unless --with-llmc); args.model_path is resolved either way."""
    import tempfile

    from slimtune.models import build_tiny_model, resolve_model

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.model_path = str(build_tiny_model(work / "tiny"))
        args.model = "tiny-llama"
        args.samples, args.seq_len, args.windows = 4, 64, 2
        args.skip_llmc = args.skip_llmc or not args.with_llmc
    args.model_path = args.model_path or str(resolve_model(args.model))
    return tmp, work


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    src = HERE.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    return env


def llmc_env(threads: int) -> dict:
    """_env without slimtune's sources: the llm-compressor venv must not see them."""
    env = _env(threads)
    env.pop("PYTHONPATH")
    return env


# --------------------------------------------------------------------------- llm-compressor venv

def llmc_python() -> Path:
    """The llm-compressor venv's python, creating the venv on first use (marker file: .ready)."""
    py = VENV / "bin" / "python"
    if (VENV / ".ready").exists() and py.exists():
        return py
    print(f"creating llm-compressor venv at {VENV} (pip install {' '.join(LLMC_REQS)}) ...", flush=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    log = VENV.parent / "llmcompressor-0.14.log"
    with open(log, "w") as f:
        rc = subprocess.run([str(py), "-m", "pip", "install", *LLMC_REQS], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"pip install {' '.join(LLMC_REQS)} failed (exit {rc}); see {log}")
    # Never benchmark against a CUDA build that pip pulled from an index by accident.
    ver = subprocess.run([str(py), "-c", "import torch, llmcompressor; print(torch.__version__, torch.version.cuda, "
                          "llmcompressor.__version__)"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1].split()
    if ver[1] != "None":
        raise SystemExit(f"the llm-compressor venv got a CUDA torch ({ver[0]}, CUDA {ver[1]}); remove {VENV} and "
                         "install the CPU wheel")
    (VENV / ".ready").write_text(" ".join(ver) + "\n")  # torch, CUDA (None), llm-compressor versions
    return py


def llmc_version(py) -> str:
    return "skipped" if py is None else (VENV / ".ready").read_text().strip()


# --------------------------------------------------------------------------- workers

_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit)|AssertionError|KeyboardInterrupt)\b:?")


def _error_message(stderr: str) -> str:
    """The last exception line of a traceback (e.g. 'ValueError: group_size ...'), if any."""
    lines = [ln.strip() for ln in stderr.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if _EXC_LINE.match(lines[i]):
            return " ".join(lines[i:i + 3])[:400]
    return ""


def _last_json(out: subprocess.CompletedProcess, what: str) -> dict:
    """The last JSON line a worker printed; RuntimeError (with the worker's exception) if it failed."""
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-6000:])
        msg = _error_message(out.stderr)
        raise RuntimeError(f"{what} failed with exit code {out.returncode}" + (f": {msg}" if msg else ""))
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no result")


# --------------------------------------------------------------------------- the one evaluator

def load_for_eval(path, args):
    """(model, tokenizer) as the evaluator sees them: slimtune's load_model (plain HF directories and
    packed-quantized ones), fp32, eval mode, torch.set_num_threads(args.threads)."""
    import torch

    from slimtune.models import load_model

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(path)
    model.eval()
    return model, tokenizer


_EVAL_TEXT: dict = {}


def _eval_text(tokenizer, n_tokens: int) -> str:
    """load_text("wiki"), or a prefix of it whose first n_tokens tokens are provably the same.

    perplexity() tokenizes the whole 2.5 MB text on every call (about 3 s) and then scores only the
    first windows. The prefix is checked once per tokenizer against the full tokenization, so the
    numbers are exactly those of the full text."""
    from slimtune.data.text import load_text

    text = load_text("wiki")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return text
    key = (hashlib.sha1(backend.to_str().encode()).hexdigest(), n_tokens)
    if key not in _EVAL_TEXT:
        full = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        chosen = text
        if len(full) > 2 * (n_tokens + 1024):
            cut = int(len(text) * 1.5 * (n_tokens + 1024) / len(full))
            ids = tokenizer(text[:cut], add_special_tokens=False, verbose=False)["input_ids"]
            if len(ids) >= n_tokens + 512 and ids[:n_tokens + 1] == full[:n_tokens + 1]:
                chosen = text[:cut]
        _EVAL_TEXT[key] = chosen
    return _EVAL_TEXT[key]


def perplexity_of(model, tokenizer, args) -> float:
    """slimtune's windowed perplexity on the first args.windows x args.seq_len Wikipedia tokens."""
    from slimtune.evaluate.perplexity import perplexity

    text = _eval_text(tokenizer, args.windows * args.seq_len)
    return perplexity(model, tokenizer, text, seq_len=args.seq_len, max_windows=args.windows,
                      progress=False)["perplexity"]


def evaluate(path, args) -> float:
    """The one evaluator: slimtune's windowed perplexity on the Wikipedia excerpt."""
    return perplexity_of(*load_for_eval(path, args), args)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def rss_mb(key: str = "VmRSS:") -> float:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM) in MB, after a gc and malloc_trim."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap pages back: what loading freed is not the model's memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


# Python run inside llama-cpp-python's own environment before a model loads: llama.cpp's extra CPU weight
# buffers (AMX, repacked layouts) off, since its Q4_0 and Q4_1 paths through them segfaulted in llama-cpp-python
# 0.3.36 on this AMX Xeon.
LLAMA_PLAIN_BUFFERS = """
import llama_cpp.llama as _L
_default_params = _L.llama_cpp.llama_model_default_params
def _plain_buffers():
    p = _default_params()
    p.use_extra_bufts = False
    return p
_L.llama_cpp.llama_model_default_params = _plain_buffers
"""
