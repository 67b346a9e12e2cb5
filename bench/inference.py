"""Inference cost of the demo's models, side by side: slimtune's paths vs transformers vs llama.cpp (issue 18).

    python bench/inference.py --run slimtune-demo [--llama-python /tmp/llamacpp/venv/bin/python]
    python bench/inference.py --run slimtune-demo --models final,deployed --runtimes slimtune-int4
    python bench/inference.py --quick                    # tiny random Llama, seconds: a smoke test

Models: the dense base (the run's model), the sparse-INT4 base (`sparse-int4`), the final merged model
(`final`, compressed-tensors) and its deployed form (`deployed`, the compact export) of a demo run
directory (`slimtune demo` writes one). Runtimes, each model in the ones that read it:
  slimtune        load_model(dir): the exact path (packed layers dequantized once into float32)
  slimtune-int4   load_model(dir, int4="kernel", embeddings=...): torch's int4 matmul, only the kernel's
                  packed copy of each weight; the embedding / LM head as INT4 codes (the head on the int4
                  kernel) where the directory stores them so (the compact export), else in float16
  slimtune-compiled  the same model (the dense one as loaded), decoded by deploy.decode.StaticDecoder: a
                  static KV cache and a torch.compile'd one-token step (compiled in the warm-up, not timed)
  transformers    AutoModelForCausalLM.from_pretrained(dir) (compressed-tensors decompresses the weights)
  llama.cpp       `slimtune export --format gguf` of the model (INT4 grid as Q4_1, embedding q8_0; the
                  dense model as f16), run by llama-cpp-python from --llama-python's environment (built
                  from its source distribution, bench/RESULTS.md says how; not a slimtune dependency);
                  and the default model's original Q4_1 GGUF as a reference point. Its extra CPU weight
                  buffers (AMX, repacked layouts) are off unless --llama-extra-bufts: with them, every Q4_1
                  file segfaulted in llama-cpp-python 0.3.36 on this AMX Xeon (f16 ran).
Each (model, runtime) runs in its own process with --threads threads: peak resident memory during
inference (the process's high-water mark, reset after loading and a warm-up, minus its resident set before
loading; `resident`: the resident set after the warm-up, the same way),
prefill tokens/s (--batch sequences of --prefill tokens in one forward; llama.cpp: one after another),
greedy decode tokens/s (batch 1, --decode tokens after a 128-token prompt, from the KV cache), medians of
--rounds; file size = the weights on disk. One run, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LLAMA_PLAIN_BUFFERS, demo_model

MODELS = ("dense", "sparse-int4", "final", "deployed")
RUNTIMES = ("slimtune", "slimtune-int4", "slimtune-compiled", "transformers", "llama.cpp")
PROMPT = 128

LLAMA_WORKER = r"""
import json, statistics, sys, time
import numpy as np
from llama_cpp import Llama
from pathlib import Path
path, ids_file, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if not settings["extra_bufts"]:
    exec(settings["plain_buffers"])
def rss(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
before = rss("VmRSS:")
llm = Llama(model_path=path, n_ctx=512, n_threads=settings["threads"], n_batch=512, verbose=False)
seqs = json.load(open(ids_file))
def prefill():
    t = time.perf_counter()
    for s in seqs:
        llm.reset(); llm.eval(s)
    return time.perf_counter() - t
def decode():
    llm.reset(); llm.eval(seqs[0][:%d])
    t = time.perf_counter()
    for _ in range(settings["decode"]):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return time.perf_counter() - t
prefill(); decode()
resident = rss("VmRSS:") - before
Path("/proc/self/clear_refs").write_text("5")
p = statistics.median(prefill() for _ in range(settings["rounds"]))
d = statistics.median(decode() for _ in range(settings["rounds"]))
print(json.dumps({"resident_mb": resident, "peak_mb": rss("VmHWM:") - before, "prefill_tok_s": sum(map(len, seqs)) / p,
                  "decode_tok_s": settings["decode"] / d}))
""" % PROMPT


def torch_worker(args) -> dict:
    """One (model, runtime) measured in this process (slimtune or transformers)."""
    import torch

    import transformers  # noqa: F401 (imported before the baseline is taken)
    from _common import rss_mb
    from slimtune.deploy.decode import StaticDecoder
    from slimtune.deploy.speed import _decode
    from slimtune.models import is_packed_quantized, load_model

    torch.set_num_threads(args.threads)
    ids = torch.tensor(json.loads(Path(args.ids).read_text()))
    before = rss_mb()
    if args.runtime == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.path, dtype=torch.float32).eval()
    else:
        packed = is_packed_quantized(args.path)
        kernel = args.runtime != "slimtune" and packed
        embeddings = ("int4" if _int4_embedding(args.path) else "float16") if kernel else None
        model, _ = load_model(args.path, int4="kernel" if kernel else "dequantize", embeddings=embeddings)
    decode = _decode
    if args.runtime == "slimtune-compiled":
        decoder = StaticDecoder(model, max_length=PROMPT + args.decode + 1)

        def decode(model, prompt, steps):  # as _decode: the steps after the prompt, timed alone
            token = decoder.prefill(prompt)
            t = time.perf_counter()
            for i in range(steps):
                token = decoder.step(token, prompt.shape[1] + i)
            return time.perf_counter() - t

    def prefill() -> float:  # the next token's logits only, as generation (and llama.cpp) computes them
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t

    with torch.no_grad():
        prefill()
        decode(model, ids[:1, :PROMPT], 2)  # warm-up: caches, kernel packing, compiling
        resident = rss_mb() - before
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on: inference only
        p = statistics.median(prefill() for _ in range(args.rounds))
        d = statistics.median(decode(model, ids[:1, :PROMPT], args.decode) for _ in range(args.rounds))
    return {"resident_mb": resident, "peak_mb": rss_mb("VmHWM:") - before, "prefill_tok_s": ids.numel() / p,
            "decode_tok_s": args.decode / d}


def _int4_embedding(path) -> bool:
    """Whether a model directory stores its embedding as INT4 (a compact export with embeddings=int4)."""
    from slimtune.quant.compact import is_compact, read_meta

    return is_compact(path) and any(g["bits"] == 4 for g in read_meta(Path(path))["embedding_grids"].values())


def _weights_mb(path: Path) -> float:
    files = [path] if path.is_file() else [*path.glob("*.safetensors"), *path.glob("*.gguf")]
    return sum(f.stat().st_size for f in files) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a demo run directory (sparse-int4/, final/, deployed/)")
    ap.add_argument("--model", default=None, help="the dense base (default: the run's recipe model)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--llama-python", help="python of an environment with llama-cpp-python (else no llama.cpp rows)")
    ap.add_argument("--llama-extra-bufts", action="store_true",
                    help="let llama.cpp use its extra CPU weight buffers (AMX, repacked Q4_0): llama.cpp 0.3.36's "
                         "Q4_1 path through them segfaulted on an AMX Xeon, so they are off by default")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="directory for the GGUF exports (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama quantized on the spot, short runs")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--worker", nargs=3, metavar=("RUNTIME", "PATH", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.runtime, args.path, args.ids = args.worker
        print(json.dumps(torch_worker(args)))
        return
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    table(rows)
    if args.plot:
        plot(rows, args.plot)


def _paths(args, work: Path) -> dict[str, Path | str]:
    from slimtune import api
    from slimtune.deploy.export import export

    if args.quick:
        from slimtune.models import build_tiny_model

        dense = build_tiny_model(work / "tiny", arch="llama", seed=0)
        int4 = api.quantize(dense, out=work / "sparse-int4", method="rtn", group_size=32, symmetric=False,
                            progress=False)
        deployed = export(int4, out=work / "deployed", format="compact", embeddings="int4")
        return {"dense": dense, "sparse-int4": int4, "final": int4, "deployed": deployed}
    if not args.run:
        raise SystemExit("give --run DIR (a `slimtune demo` run directory) or --quick")
    run_dir = Path(args.run)
    return {"dense": args.model or demo_model(run_dir), **{m: run_dir / m for m in MODELS[1:]}}


def run(args) -> list[dict]:
    from slimtune.assets import package_asset
    from slimtune.deploy.export import export
    from slimtune.models import BUILTIN_MODELS, resolve_model
    from slimtune.quant.compact import is_compact

    work = Path(args.work or tempfile.mkdtemp(prefix="inference-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.batch, args.prefill, args.decode, args.rounds = 2, 32, 8, 2
    paths = _paths(args, work)
    from slimtune.data.text import load_text
    from slimtune.models import load_model

    _, tok = load_model(paths["dense"])
    text = load_text("wiki")
    ids = tok(text[:200000], return_tensors="pt").input_ids[0]
    seqs = [ids[i * args.prefill:(i + 1) * args.prefill].tolist() for i in range(args.batch)]
    (work / "ids.json").write_text(json.dumps(seqs))
    settings = {"threads": args.threads, "decode": args.decode, "rounds": args.rounds, "extra_bufts": args.llama_extra_bufts,
                "plain_buffers": LLAMA_PLAIN_BUFFERS}
    rows = []
    for name in args.models.split(","):
        local = Path(resolve_model(str(paths[name])))
        for runtime in args.runtimes.split(","):
            if runtime == "transformers" and is_compact(local):
                continue  # transformers cannot read the compact format
            if runtime == "llama.cpp":
                if not args.llama_python:
                    continue
                gguf = work / f"gguf-{name}"
                if not gguf.exists():
                    export(paths[name], out=gguf, format="gguf", **({"float_type": "f16", "embed_type": "f16"}
                                                                         if name == "dense" else {}))
                target = gguf / "model.gguf"
                cmd = [args.llama_python, "-c", LLAMA_WORKER, str(target), str(work / "ids.json"), json.dumps(settings)]
            elif runtime == "slimtune-int4" and name == "dense":
                continue  # no packed layers
            else:
                target = local
                cmd = [sys.executable, __file__, "--worker", runtime, str(local), str(work / "ids.json"),
                       "--threads", str(args.threads), "--decode", str(args.decode), "--rounds", str(args.rounds)]
            print(f"  {name} / {runtime} ...", flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name} / {runtime} failed:\n{out.stderr[-3000:]}")
            rows.append({"model": name, "runtime": runtime, "weights_mb": _weights_mb(target),
                         **json.loads(out.stdout.splitlines()[-1])})
    if args.llama_python and "llama.cpp" in args.runtimes and not args.quick:
        b = BUILTIN_MODELS["smollm2-135m"]
        original = package_asset(b.dist, b.version, b.member)
        cmd = [args.llama_python, "-c", LLAMA_WORKER, str(original), str(work / "ids.json"), json.dumps(settings)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append({"model": "original Q4_1 GGUF", "runtime": "llama.cpp", "weights_mb": _weights_mb(original),
                     **json.loads(out.stdout.splitlines()[-1])})
    return rows


def table(rows: list[dict]) -> None:
    """The rows side by side; the "vs dense" ratios need the dense model on slimtune's path (else "-")."""
    ref = next((r for r in rows if r["runtime"] == "slimtune" and r["model"] == "dense"), None)
    llama = {r["model"]: r for r in rows if r["runtime"] == "llama.cpp"}

    def vs(value: float, base: dict | None, key: str) -> str:
        return "-" if base is None else f"{value / base[key]:.2f}"

    print("\n| model | runtime | weights MB | resident MB | peak MB | vs dense | prefill tok/s | vs dense | decode tok/s "
          "| vs dense | decode vs llama.cpp |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        same = None if r["runtime"] == "llama.cpp" else llama.get(r["model"])
        print(f"| {r['model']} | {r['runtime']} | {r['weights_mb']:.1f} | {r['resident_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{vs(r['peak_mb'], ref, 'peak_mb')} | {r['prefill_tok_s']:.0f} | {vs(r['prefill_tok_s'], ref, 'prefill_tok_s')} "
              f"| {r['decode_tok_s']:.1f} | {vs(r['decode_tok_s'], ref, 'decode_tok_s')} | "
              f"{vs(r['decode_tok_s'], same, 'decode_tok_s')} |")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['runtime']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    for ax, key, title in zip(axes, ("peak_mb", "prefill_tok_s", "decode_tok_s"),
                              ("peak memory at inference (MB)", "prefill tokens/s", "decode tokens/s")):
        ax.barh(range(len(rows)), [r[key] for r in rows], color=[
            {"slimtune": "tab:blue", "slimtune-int4": "tab:green", "slimtune-compiled": "tab:purple",
             "transformers": "tab:orange",
             "llama.cpp": "tab:red"}[r["runtime"]] for r in rows])
        ax.set_yticks(range(len(rows)), labels if ax is axes[0] else [""] * len(rows), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
