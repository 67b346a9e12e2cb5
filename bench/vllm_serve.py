"""vLLM on a GPU (issue 18): generation tokens/s of the demo's dense base and its final sparse-INT4 model
(compressed-tensors, as `slimtune demo` writes it), side by side, in one run.

    python bench/vllm_serve.py --run slimtune-demo [--json vllm.json]
    python bench/vllm_serve.py --models dense=/path/hf-dir,final=/path/int4-dir

Needs a CUDA GPU and vLLM in the environment (`pip install vllm`; not a slimtune dependency). Without either
it prints why, writes {"skipped": why} to --json and exits 0: on a CPU machine the bench skips cleanly.
Not yet run on a GPU: none was lent while it was written (bench/RESULTS.md records a run once one is).

The dense base is written once as a float16 HF directory (vLLM reads directories, not slimtune's aliases).
Each model then runs in its own process, since vLLM holds the GPU until its process ends: vllm.LLM(dir,
dtype float16), one warm-up, then greedy generation (temperature 0, EOS ignored) of --new-tokens tokens after
seeded random prompts of --prompt-tokens tokens, at batch 1 and at --batch prompts at once; tokens/s =
generated tokens / wall time, median of --rounds. A model vLLM refuses (an asymmetric grid's "block"
strategy, kernel shape rules: README, "Deploy") is reported with vLLM's error instead of a number.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def why_skipped() -> str | None:
    """Why this machine cannot run the bench, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm, on a machine with a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (vLLM's INT4 kernels run on a GPU)"
    return None


def worker(path: str, settings: dict) -> dict:
    """One model in this process: tokens/s at batch 1 and at the batch size."""
    import random

    from vllm import LLM, SamplingParams

    llm = LLM(model=path, dtype="float16", max_model_len=settings["prompt_tokens"] + settings["new_tokens"] + 8,
              seed=0)
    vocab = llm.get_tokenizer().vocab_size
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(settings["prompt_tokens"])]}
               for _ in range(settings["batch"])]
    params = SamplingParams(temperature=0.0, max_tokens=settings["new_tokens"], ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up: kernels, CUDA graphs

    def rate(batch: list) -> float:
        t = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - t)

    return {f"tok_s_batch_{n}": statistics.median(rate(prompts[:n]) for _ in range(settings["rounds"]))
            for n in (1, settings["batch"])}


def model_paths(args, work: Path) -> dict[str, str]:
    if args.models:
        return dict(item.split("=", 1) for item in args.models.split(","))
    if not args.run:
        raise SystemExit("give --run DIR (a `slimtune demo` run directory) or --models name=dir,...")
    run_dir = Path(args.run)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    from _common import demo_model
    from slimtune.models import load_model

    dense = work / "dense-hf"
    if not dense.exists():
        net, tokenizer = load_model(demo_model(run_dir))
        net.to(torch.float16).save_pretrained(dense)
        tokenizer.save_pretrained(dense)
    return {"dense": str(dense), "final": str(run_dir / "final")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a `slimtune demo` run directory")
    ap.add_argument("--models", help="name=directory,... instead of --run (the first is the reference)")
    ap.add_argument("--work", default="/tmp/slimtune-vllm", help="where the dense HF directory is written")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results (or why the bench skipped) here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = {k: getattr(args, k) for k in ("prompt_tokens", "new_tokens", "batch", "rounds")}
    if args.worker:
        print(json.dumps(worker(args.worker, settings)))
        return 0
    skipped = why_skipped()
    if skipped:
        print(f"skipped: {skipped}")
        if args.json:
            Path(args.json).write_text(json.dumps({"skipped": skipped}) + "\n")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, path in model_paths(args, work).items():
        cmd = [sys.executable, __file__, "--worker", path, *sum(([f"--{k.replace('_', '-')}", str(v)]
                                                                 for k, v in settings.items()), [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            rows.append({"model": name, "path": path, **json.loads(done.stdout.strip().splitlines()[-1])})
        else:  # vLLM refused the model (or failed): its last error line
            rows.append({"model": name, "path": path, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
    print(f"\n| model | tok/s batch 1 | vs {rows[0]['model']} | tok/s batch {args.batch} | vs {rows[0]['model']} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | refused: {r['error'][:120]} | | | |")
            continue
        cells = []
        for key in ("tok_s_batch_1", f"tok_s_batch_{args.batch}"):
            base = rows[0].get(key)
            cells += [f"{r[key]:.1f}", f"{r[key] / base:.2f}x" if base else "-"]
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
