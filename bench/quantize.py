"""INT4 quantization quality, time and size: slimtune's RTN and GPTQ vs llm-compressor's GPTQ, on the
dense model and on a 50%-sparse (Wanda) base.

    python bench/quantize.py                               # default model: {dense, sparse} x {sym, asym} x g{64, 192}
    python bench/quantize.py --groups 64 --grids asym      # a subset
    python bench/quantize.py --bases dense --methods gptq  # dense base, GPTQ only (no RTN)
    python bench/quantize.py --no-act-order                # GPTQ without activation ordering on both sides
    python bench/quantize.py --observers minmax            # GPTQ with min-max group scales only
    python bench/quantize.py --skip-llmc                   # slimtune only
    python bench/quantize.py --quick                       # seconds: tiny random Llama, group 32, slimtune only
    python bench/quantize.py --quick --with-llmc           # ... and the llm-compressor worker too

Both sides quantize the same fp32 model with the same calibration token ids: slimtune's
`calibration_batches(tokenizer, "news", 16, 512, seed=0)` (the slimtune worker checks that the ids it
calibrates on equal the ones llm-compressor gets). slimtune runs `quantize_model(model, tokenizer,
method, 4, group_size, symmetric, calibration={source: news, n_samples: 16, seq_len: 512, seed: 0},
progress=False, options={observer, and for gptq act_order, damp 0.01})` then `save_quantized` (compressed-tensors pack-quantized),
in a fresh subprocess of this venv. llm-compressor 0.14 (own venv, see bench/sparsify.py and
bench/_common.py) runs `oneshot` with `GPTQModifier(config_groups={"group_0": QuantizationScheme(
targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", symmetric=..., strategy="group",
group_size=..., observer=...))}, ignore=["lm_head"], dampening_frac=0.01, block_size=128,
actorder="static")` (bench/_llmc_worker.py), on the token ids as a `datasets.Dataset`, unshuffled,
batch_size 1. Activation ordering is on on both sides (slimtune's default act_order, static groups;
llm-compressor's default actorder="static"), off on both with --no-act-order.

GPTQ runs once per observer (--observers, default both): "minmax" (the paper's group scales; slimtune
observer="minmax", llm-compressor's default observer) and "imatrix" (each group's scale from a shrink
search weighting each input's rounding error by its mean square activation; slimtune's default
observer="imatrix", llm-compressor's observer="imatrix_mse"). RTN always uses min-max scales.

The sparse base is made once per run with slimtune's Wanda, 50% unstructured (`api.sparsify`, same
calibration settings), and both sides quantize it. Reported: the fraction of exact zeros in the
quantized linears after quantization (dequantized weights == 0; on the dense base this counts the
weights that rounded to zero) and, on the sparse base, the fraction of the base's zeros that are still
zero (slimtune's GPTQ and RTN keep every one by construction; llm-compressor's GPTQ does not try to).

Saving and the ONE evaluator: slimtune's output is reloaded with `slimtune.models.load_model` (packed
QuantLinear modules). llm-compressor's results are saved pack-quantized (`save_compressed=True`), which
load_model reads too (asymmetric group grids with their int32 zero points packed along the output
dimension included). Every saved directory is
scored by slimtune's `perplexity` (fp32, seq_len 512, first 8 non-overlapping windows of
`load_text("wiki")`), and each worker's in-memory loss on the first calibration sequence is recomputed
on the reloaded model (check_loss), so the table shows what was made, not what a loader made of it.

Timed on both sides: only the quantization call (`quantize_model(...)` / `oneshot(...)`), model loaded,
before saving; wall clock and process CPU time (all threads), torch.set_num_threads(--threads). Jobs
run one at a time in fresh worker processes, slimtune and llm-compressor alternating (and which goes
first alternating), so load drifts hit both alike. (--quick runs consecutive slimtune jobs in one worker.)

Size: the bytes of the quantized layers' tensors in the saved safetensors file (weight_packed,
weight_scale, weight_zero_point, weight_shape) as a fraction of their fp16 size (2 bytes x weights);
the issue's goal for INT4 group 64 is <= 31%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `python bench/quantize.py` has it already; other ways in may not
    sys.path.insert(0, str(HERE))

from _common import (_env, _fmt, add_common_args, setup_run, _last_json, _loadavg, llmc_env, llmc_python, llmc_version,  # noqa: E402
                     load_for_eval, perplexity_of)

BITS = 4
DAMP = 0.01
# The issue's reference points: llm-compressor 0.14 GPTQ INT4 measured by the issue author (16 x 512 news
# tokens, ppl over 8 x 512 wiki tokens, dense base), about 305 CPU-seconds each. The issue does not say
# which activation ordering; GPTQModifier's default is actorder="static", so probably that (--act-order).
REFERENCE = {("dense", "-", None): 21.2, ("dense", "asym", 64): 26.2, ("dense", "sym", 64): 29.8,
             ("dense", "sym", 192): 30.9}
REFERENCE_CPU_S = 305
LLMC_OBSERVER = {"minmax": None, "imatrix": "imatrix_mse"}  # slimtune's observer -> llm-compressor's
SIZE_GOAL = 0.31  # INT4 g64 export, fraction of the fp16 size of the quantized layers
QUANT_LEAVES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


# --------------------------------------------------------------------------- measurements

def packed_size(directory) -> dict | None:
    """Bytes of the quantized layers' tensors in a pack-quantized directory vs their fp16 size."""
    from safetensors import safe_open

    nbytes = weights = layers = 0
    for f in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            keys = set(st.keys())
            for name in {k[:-len(".weight_packed")] for k in keys if k.endswith(".weight_packed")}:
                for leaf in QUANT_LEAVES:
                    if f"{name}.{leaf}" in keys:
                        t = st.get_tensor(f"{name}.{leaf}")
                        nbytes += t.numel() * t.element_size()
                out, cols = st.get_tensor(f"{name}.weight_shape").tolist()
                weights += out * cols
                layers += 1
    if not layers:
        return None
    return {"bytes": nbytes, "fp16_bytes": 2 * weights, "fraction": nbytes / (2 * weights), "layers": layers,
            "weights": weights}


def check_loss(model, ids) -> float:
    import torch

    with torch.no_grad():
        return float(model(ids[:1], labels=ids[:1]).loss)


# --------------------------------------------------------------------------- slimtune worker

def _slimtune_job(job: dict, calib) -> dict:
    import torch

    from slimtune.data.calibration import calibration_batches
    from slimtune.models import linear_modules, load_model
    from slimtune.quant import quant_linears, quantize_model, save_quantized

    model, tokenizer = load_model(job["base_path"])
    n, seq_len = calib.shape
    gptq = job["method"] == "gptq"
    calibration = {"source": "news", "n_samples": n, "seq_len": seq_len, "seed": 0} if gptq else None
    if gptq and not torch.equal(calibration_batches(tokenizer, "news", n, seq_len, 0), calib):
        raise RuntimeError("slimtune's calibration ids differ from the ones llm-compressor gets")
    before = {name: m.weight == 0 for name, m in linear_modules(model).items()}
    t0, c0 = time.perf_counter(), time.process_time()
    knobs = {"observer": job["observer"], **({"act_order": job["act_order"], "damp": DAMP} if gptq else {})}
    report = quantize_model(model, tokenizer, job["method"], BITS, job["group"], job["grid"] == "sym",
                            calibration=calibration, progress=False, options=knobs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    zeros = total = zeros_before = kept = 0
    for name, m in quant_linears(model).items():
        after = m.dequantized_weight() == 0
        zeros += int(after.sum())
        total += after.numel()
        zeros_before += int(before[name].sum())
        kept += int((after & before[name]).sum())
    loss = check_loss(model, calib)
    save_quantized(model, job["out"], tokenizer)
    return {**job, "wall_s": wall, "cpu_s": cpu, "apply_s": report["total"]["wall_time_s"],
            "sparsity": zeros / max(total, 1), "sparsity_before": zeros_before / max(total, 1),
            "zeros_kept": kept / zeros_before if zeros_before else None, "check_loss": loss,
            "bytes_per_weight": report["total"]["bytes_per_weight"], "torch": torch.__version__}


def slimtune_worker(args) -> list[dict]:
    import torch

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    calib = torch.load(args._calib)
    results = []
    for job in json.loads(args._jobs):
        try:
            results.append(_slimtune_job(job, calib))
        except Exception as e:  # noqa: BLE001 - reported in the table, the other jobs go on
            results.append({**job, "error": f"{type(e).__name__}: {e}"[:400]})
    return results


# --------------------------------------------------------------------------- driver

def run_slimtune(args, jobs: list[dict], calib) -> list[dict]:
    cmd = [sys.executable, __file__, "--_worker", "--_jobs", json.dumps(jobs), "--_calib", str(calib),
           "--threads", str(args.threads)]
    what = "slimtune " + ", ".join(f"{j['method']} {j['base']} {j['grid']} g{j['group']}" for j in jobs)
    try:
        return _last_json(subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True), what)
    except RuntimeError as e:
        return [{**j, "error": str(e)} for j in jobs]


def run_llmc(args, py, job: dict, calib) -> dict:
    cmd = [str(py), str(HERE / "_llmc_worker.py"), "--model", job["base_path"], "--calib", str(calib),
           "--method", "gptq", "--bits", str(BITS), "--group-size", str(job["group"]), "--damp", str(DAMP),
           "--block-size", "128", "--actorder", "static" if job["act_order"] else "none",
           "--save", "compressed"] + (["--observer", LLMC_OBSERVER[job["observer"]]] if LLMC_OBSERVER[job["observer"]] else []) + [
           "--threads", str(args.threads), "--out", job["out"]] + (["--asymmetric"] if job["grid"] == "asym" else [])
    try:
        r = _last_json(subprocess.run(cmd, env=llmc_env(args.threads), capture_output=True, text=True),
                       f"llm-compressor gptq {job['base']} {job['grid']} g{job['group']}")
    except RuntimeError as e:
        return {**job, "error": str(e)}
    return {**job, **{k: v for k, v in r.items() if k not in ("side", "method", "out", "observer")}}


def _label(r) -> str:
    return f"{r['side']:<8} {r['method']:<4} {r['base']:<6} {r['grid']:<4} g{r['group']:<4} {r['observer']:<7}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "model")
    ap.add_argument("--bases", default="dense,sparse", help="dense and/or sparse (Wanda 50%% of the model)")
    ap.add_argument("--methods", default="rtn,gptq", help="slimtune methods (llm-compressor: gptq only)")
    ap.add_argument("--grids", default="sym,asym")
    ap.add_argument("--groups", default=None, help="group sizes (default 64,192; --quick: 32)")
    ap.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                    help="GPTQ with activation ordering on both sides (slimtune act_order, llmc actorder=static; "
                         "default on, both sides' default)")
    ap.add_argument("--observers", default="minmax,imatrix", help="GPTQ group-scale observers (minmax, imatrix)")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 4 x 64 tokens, group 32, slimtune only")
    ap.add_argument("--_jobs", help=argparse.SUPPRESS)
    ap.add_argument("--_calib", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(slimtune_worker(args)))
        return 0

    import torch

    from slimtune.api import sparsify
    from slimtune.data.calibration import calibration_batches
    from slimtune.models import load_model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tmp, work = setup_run(args)
    if args.quick:
        args.groups = args.groups or "32"  # the tiny model's widths are 64 and 128
    bases, methods, grids = args.bases.split(","), args.methods.split(","), args.grids.split(",")
    observers = args.observers.split(",")
    groups = [int(g) for g in (args.groups or "64,192").split(",")]
    for what, values, known in (("bases", bases, {"dense", "sparse"}), ("methods", methods, {"rtn", "gptq"}),
                                ("grids", grids, {"sym", "asym"}), ("observers", observers, set(LLMC_OBSERVER))):
        if not set(values) <= known:
            ap.error(f"--{what}: unknown {', '.join(sorted(set(values) - known))}; choose from {', '.join(sorted(known))}")

    _, tokenizer = load_model(args.model_path)
    ids = calibration_batches(tokenizer, "news", args.samples, args.seq_len, seed=0)
    calib_file = work / f"calib-news-{args.samples}x{args.seq_len}.pt"
    torch.save(ids, calib_file)
    py = None if args.skip_llmc else llmc_python()
    print(f"model {args.model} ({args.model_path}), INT{BITS}, calibration {args.samples} x {args.seq_len} news tokens "
          f"(seed 0), act-order {'on (static groups)' if args.act_order else 'off'}, ppl over {args.windows} x "
          f"{args.seq_len} wiki tokens, fp32, {args.threads} threads; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; llm-compressor: {llmc_version(py)}; load average before: {_loadavg()}", flush=True)

    base_paths = {"dense": args.model_path}
    if "sparse" in bases:
        t0 = time.perf_counter()
        base_paths["sparse"] = str(sparsify(args.model_path, out=work / "base-sparse-wanda50", method="wanda",
                                            sparsity=0.5, overwrite=True, progress=False,
                                            calibration={"source": "news", "n_samples": args.samples,
                                                         "seq_len": args.seq_len, "seed": 0}))
        print(f"  sparse base: slimtune Wanda 50% unstructured in {time.perf_counter() - t0:.1f} s -> "
              f"{base_paths['sparse']}", flush=True)

    # Jobs: per setting slimtune RTN, then per observer slimtune GPTQ and llm-compressor GPTQ in
    # alternating order.
    jobs, k = [], 0
    for base in bases:
        for grid in grids:
            for group in groups:
                setting = {"base": base, "base_path": base_paths[base], "grid": grid, "group": group,
                           "act_order": args.act_order}
                sides = [("slimtune", "rtn", "minmax")] if "rtn" in methods else []
                for observer in observers if "gptq" in methods else []:
                    pair = [("slimtune", "gptq", observer)] + ([("llmc", "gptq", observer)] if py is not None else [])
                    sides += pair[::-1] if k % 2 else pair
                    k += 1
                for side, method, observer in sides:
                    out = work / f"{side}-{method}-{base}-{grid}-g{group}-{observer}{'-ao' if args.act_order else ''}"
                    jobs.append({**setting, "side": side, "method": method, "observer": observer, "out": str(out)})
    chunks = []  # worker calls: one job each, or (--quick) runs of consecutive slimtune jobs
    for job in jobs:
        if args.quick and chunks and job["side"] == "slimtune" and chunks[-1][0]["side"] == "slimtune":
            chunks[-1].append(job)
        else:
            chunks.append([job])

    results = []
    for chunk in chunks:
        done = run_slimtune(args, chunk, calib_file) if chunk[0]["side"] == "slimtune" else [run_llmc(args, py, chunk[0], calib_file)]
        for r in done:
            r["load_after"] = _loadavg()
            results.append(r)
            if "error" in r:
                print(f"  {_label(r)} FAILED: {r['error']}", flush=True)
            else:
                print(f"  {_label(r)} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU  zeros {r['sparsity_before']:.4f}"
                      f" -> {r['sparsity']:.4f}  load {r['load_after']}", flush=True)

    # One evaluator over every saved model and the bases.
    base_ppl = {}
    for base in bases:
        base_ppl[base] = perplexity_of(*load_for_eval(base_paths[base], args), args)
        print(f"  evaluated {base} base: ppl {base_ppl[base]:.2f}", flush=True)
    for r in results:
        if "error" in r:
            continue
        try:
            model, tok = load_for_eval(r["out"], args)
            r["reloaded_loss"] = check_loss(model, ids)
            r["ppl"] = perplexity_of(model, tok, args)
            del model
        except Exception as e:  # noqa: BLE001 - a directory the evaluator cannot read is a result too
            r["eval_error"] = f"{type(e).__name__}: {e}"[:400]
            print(f"  evaluated {_label(r)} FAILED: {r['eval_error']}", flush=True)
            continue
        r["size"] = packed_size(r["out"])
        print(f"  evaluated {_label(r)} ppl {r['ppl']:.2f} (loss check {r['check_loss']:.6f} in memory, "
              f"{r['reloaded_loss']:.6f} reloaded)", flush=True)

    print_tables(args, bases, grids, groups, observers, base_ppl, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "base_ppl": base_ppl, "raw": results},
                                              indent=1, default=str))
    tmp.cleanup()
    return 0


def print_tables(args, bases, grids, groups, observers, base_ppl, results) -> None:
    def find(side, method, base, grid, group, observer):
        return next((r for r in results if (r["side"], r["method"], r["base"], r["grid"], r["group"], r["observer"])
                     == (side, method, base, grid, group, observer)), None)

    notes = []

    def cell(r, key, spec):
        if r is None:
            return "-"
        err = r.get("error") or (r.get("eval_error") if key == "ppl" else None)
        if err:
            if err not in notes:
                notes.append(err)
            # error: the worker raised (the method refused the setting); eval_error: the evaluator could not load it
            return f"{'refused' if 'error' in r else 'not loadable'} [{notes.index(err) + 1}]"
        return _fmt(r.get(key), spec)

    def ratio(a, b, key):
        x, y = (None if r is None or "error" in r else r.get(key) for r in (a, b))
        return f"{x / y:.3f}" if x is not None and y else "-"

    def pair(a, b, key, spec=".3f"):
        return " / ".join(_fmt(None if r is None or "error" in r else r.get(key), spec) for r in (a, b))

    ao = " (act-order on both sides)" if args.act_order else " (no act-order)"
    print(f"\nINT{BITS} weight quantization{ao}; calibration {args.samples} x {args.seq_len} news tokens; "
          f"ppl: {args.windows} x {args.seq_len} wiki tokens; ref: llm-compressor as measured by the issue author "
          f"(about {REFERENCE_CPU_S} CPU-seconds each)")
    head = ("| setting | GPTQ observer | slimtune RTN ppl | slimtune GPTQ ppl | llmc GPTQ ppl | ppl ours/llmc | ref (llmc) "
            "| slimtune GPTQ s | llmc s | time ratio | slimtune CPU s | llmc CPU s | CPU ratio "
            "| zeros after (ours / llmc) | base zeros kept (ours / llmc) |")
    print(head)
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(head.count("|") - 1)) + "|")
    for base, label in (("dense", "dense, not quantized"), ("sparse", "sparse base (Wanda 50%), not quantized")):
        if base in base_ppl:
            print(f"| {label} | | {base_ppl[base]:.2f} | | | | {_fmt(REFERENCE.get((base, '-', None)), '.1f')} "
                  "| | | | | | | | |")
    settings = [(base, grid, group, observer) for base in bases for grid in grids for group in groups
                for observer in observers]
    for base, grid, group, observer in settings:
        rtn = find("slimtune", "rtn", base, grid, group, "minmax")
        s, l = find("slimtune", "gptq", base, grid, group, observer), find("llmc", "gptq", base, grid, group, observer)
        kept = pair(s, l, "zeros_kept") if base == "sparse" else ""
        ref = REFERENCE.get((base, grid, group)) if observer == "minmax" else None
        print(f"| {base} {grid} g{group} | {observer} | {cell(rtn, 'ppl', '.2f')} | {cell(s, 'ppl', '.2f')} "
              f"| {cell(l, 'ppl', '.2f')} | {ratio(s, l, 'ppl')} | {_fmt(ref, '.1f')} "
              f"| {cell(s, 'wall_s', '.1f')} | {cell(l, 'wall_s', '.1f')} | {ratio(s, l, 'wall_s')} "
              f"| {cell(s, 'cpu_s', '.1f')} | {cell(l, 'cpu_s', '.1f')} | {ratio(s, l, 'cpu_s')} "
              f"| {pair(s, l, 'sparsity')} | {kept} |")
    for i, n in enumerate(notes, 1):
        print(f"\n[{i}] {n}")
    print("\nref (llmc): the issue author's llm-compressor numbers; the issue does not state the activation "
          "ordering; GPTQModifier defaults to actorder=\"static\" and min-max scales, as the minmax rows here.")
    print(f"s: wall time of the quantization call only (model loaded, before saving); CPU s: process CPU time of "
          f"the same call (all threads). zeros after: fraction of exact zeros among the quantized layers' "
          f"dequantized weights. base zeros kept: fraction of the sparse base's zeros still zero. "
          f"Load average after: {_loadavg()}")
    rtn = [f"{r['base']} {r['grid']} g{r['group']} {r['wall_s']:.1f} s" for r in results
           if r["method"] == "rtn" and "error" not in r]
    if rtn:
        print("slimtune RTN call times: " + ", ".join(rtn))

    # Reload check: the evaluator's model must be the one the worker made.
    bad = [r for r in results if "reloaded_loss" in r
           and abs(r["reloaded_loss"] - r["check_loss"]) > 1e-4 * max(1.0, abs(r["check_loss"]))]
    checked = sum("reloaded_loss" in r for r in results)
    print(f"reload check (loss on the first calibration sequence, in the worker vs after reloading): "
          f"{checked - len(bad)} of {checked} saved models agree to 1e-4" +
          "".join(f"\n  MISMATCH {_label(r)}: {r['check_loss']:.6f} vs {r['reloaded_loss']:.6f}" for r in bad))

    # On-disk size of the packed exports.
    sized = {}
    for r in results:
        if r.get("size") and (r["side"], r["grid"], r["group"]) not in sized:
            sized[(r["side"], r["grid"], r["group"])] = r["size"]
    if sized:
        print("\non-disk size of the quantized layers (packed codes + scales + zero points + shapes) vs fp16:")
        print("| export | grid | group | layers | weights | bytes | fp16 bytes | fraction | goal (g64) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for (side, grid, group), z in sorted(sized.items(), key=lambda kv: (kv[0][0] != "slimtune", kv[0][1:])):
            goal = (f"<= {SIZE_GOAL:.0%}: {'met' if z['fraction'] <= SIZE_GOAL else 'NOT met'}"
                    if group == 64 and side == "slimtune" else "")
            print(f"| {side} | {grid} | {group} | {z['layers']} | {z['weights']:,} | {z['bytes']:,} "
                  f"| {z['fp16_bytes']:,} | {z['fraction']:.2%} | {goal} |")


if __name__ == "__main__":
    sys.exit(main())
