"""SQFT's comparison on the default model and a real task, in one run: which way of fine-tuning a
sparse (INT4) base gives an accurate model that is still sparse and still INT4?

    python bench/sqft.py                          # SmolLM2-135M, polarity, Wanda 50% + GPTQ INT4 g64 asym
    python bench/sqft.py --keep /tmp/sqft         # keep the artifacts; a re-run reuses finished ones
    python bench/sqft.py --quick                  # tiny random Llama, a minute: a smoke test

Pipeline: the dense model is pruned 50% with Wanda (16 x 512 news tokens), and the sparse model is
quantized INT4 with GPTQ (same calibration). Then, each with a fixed-rank adapter (rank = the median
of the NLS space, so sizes are equal) and with an NLS super-adapter (median sub-adapter, or
--select), same task, seed and schedule:
  base                     sparse and sparse-INT4 bases, no tuning
  LoRA (unmerged)          LoRA on the sparse-INT4 base, kept beside it (the model is base + adapter)
  LoRA merged + GPTQ       LoRA merged into the dequantized base (its zeros are filled) and the result
                           re-quantized with GPTQ: the usual workaround
  SparsePEFT merged        masked adapter on the sparse float base, merged: sparse, not INT4
  QA-SparsePEFT merged     masked, quantization-aware adapter on the sparse-INT4 base, merged onto the
                           base's own grid: sparse and INT4. W = dequantized INT4 base (slimtune's
                           default) and W = sparse float weights (the SQFT paper's choice).
Every row reports test accuracy, Wikipedia perplexity, the sparsity of the decoder's linear layers,
their bits, and the size on disk of the final model directory. QA-SparsePEFT rows also report the
unmerged (quantization-aware forward) accuracy: the merge is exact, so the two must agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="polarity")
    ap.add_argument("--rank-space", default="32,24,16", help="NLS space; the fixed-rank adapters use its median")
    ap.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha (SQFT: 64 at r_max 32)")
    ap.add_argument("--select", default="median", help="NLS sub-adapter: maximal, median, minimal or nncf")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--sym", action="store_true", help="symmetric INT4 grid (default asymmetric)")
    ap.add_argument("--windows", type=int, default=4, help="perplexity windows of 512 tokens of the Wikipedia excerpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", default=None, help="artifact directory (default: a temp dir); finished artifacts are reused")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, short runs")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from slimtune import api
    from slimtune.models import build_tiny_model
    from slimtune.report import model_facts, size_mb

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    space = [int(r) for r in args.rank_space.split(",")]
    fixed_rank = space[(len(space) - 1) // 2]
    calibration = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0}
    train = dict(epochs=args.epochs, learning_rate=args.lr, batch_size=8, warmup_steps=5, max_length=128,
                 save_steps=1000, seed=42, progress=False)
    evaluation = dict(perplexity_text="wiki", seq_len=512, max_windows=args.windows, progress=False)
    model = args.model
    if args.quick:
        model = str(build_tiny_model(work / "tiny")) if not (work / "tiny").exists() else str(work / "tiny")
        calibration = {"source": "news", "n_samples": 4, "seq_len": 64, "seed": 0}
        train.update(epochs=1.0, max_length=64)
        evaluation.update(seq_len=64, max_windows=2)
        space, fixed_rank = [8, 6, 4], 6

    def stage(name, make):
        path = work / name
        if not path.exists():
            t0 = time.time()
            make(path)
            print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
        return path

    print(f"model {args.model}, task {args.task}, NLS space {space} (fixed rank {fixed_rank}), alpha {args.alpha:g}, "
          f"INT4 g{args.group_size} {'sym' if args.sym else 'asym'}, {args.epochs:g} epochs, lr {args.lr:g}", flush=True)
    quant = dict(method="gptq", bits=4, group_size=args.group_size, symmetric=args.sym, calibration=calibration,
                 progress=False)
    sparse = stage("sparse", lambda p: api.sparsify(model, out=p, method="wanda", sparsity=0.5,
                                                    calibration=calibration, progress=False))
    int4 = stage("sparse-int4", lambda p: api.quantize(sparse, out=p, **quant))

    def tune(name, base, nls, **kw):
        adapter = dict(adapter="nls", rank_space=space) if nls else dict(adapter="lora", rank=fixed_rank)
        sup = stage(name, lambda p: api.finetune(base, task=args.task, out=p, alpha=args.alpha * (
            1 if nls else fixed_rank / space[0]), **adapter, **kw, **train))
        if not nls:
            return sup
        return stage(name + "-sub", lambda p: api.extract(sup, out=p, select=args.select, progress=False))

    rows = []

    def row(label, nls, model_dir, adapter=None, note=""):
        t0 = time.time()
        r = api.evaluate(model_dir, task=args.task, adapter=adapter, **evaluation)
        facts = model_facts(model_dir)
        rows.append({"method": label, "nls": nls, "acc": api.task_score(r), "ppl": r["perplexity"],
                     "sparsity": facts["sparsity"], "bits": facts["bits"],
                     "size_mb": facts["size_mb"] + (size_mb(Path(adapter)) if adapter else 0.0),
                     "note": note, "eval_s": round(time.time() - t0, 1)})
        print(f"  {label}{' + NLS' if nls else ''}: acc {rows[-1]['acc']:.3f}, ppl {rows[-1]['ppl']:.2f}, "
              f"sparsity {rows[-1]['sparsity']:.3f}, bits {rows[-1]['bits']}", flush=True)

    row("dense base", False, model)
    row("sparse base (Wanda 50%)", False, sparse)
    row("sparse-INT4 base (GPTQ)", False, int4)
    for nls in (False, True):
        suffix = "-nls" if nls else ""
        lora = tune("lora" + suffix, int4, nls, dropout=0.0)
        row("LoRA (unmerged)", nls, int4, adapter=lora, note="base + adapter")
        merged = stage("lora-merged" + suffix, lambda p: api.merge(lora, out=p))
        requant = stage("lora-merged-gptq" + suffix, lambda p: api.quantize(merged, out=p, **quant))
        row("LoRA merged + GPTQ", nls, requant)
        sp = tune("sparsepeft" + suffix, sparse, nls, sparse_adapter=True)
        row("SparsePEFT merged", nls, stage("sparsepeft-merged" + suffix, lambda p: api.merge(sp, out=p)))
        for weights in ("quantized", "float"):
            name = f"qa-{weights}{suffix}"
            qa = tune(name, int4, nls, sparse_adapter=True, quant_aware=True, qa_weights=weights)
            unmerged = api.evaluate(int4, task=args.task, adapter=qa, progress=False)
            row(f"QA-SparsePEFT merged (W = {'INT4 base' if weights == 'quantized' else 'float weights'})", nls,
                stage(name + "-merged", lambda p: api.merge(qa, out=p)),
                note=f"unmerged acc {unmerged.get('acc', unmerged.get('accuracy')):.3f}")

    print(f"\n{args.task} test accuracy, Wikipedia perplexity ({evaluation['max_windows']} x {evaluation['seq_len']} "
          "tokens); sparsity and bits of the decoder's linear layers; size: safetensors on disk (base + adapter "
          "where unmerged)\n")
    print("| method | NLS | test acc | wiki ppl | sparsity | bits | size MB | note |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for r in rows:
        print(f"| {r['method']} | {'yes' if r['nls'] else '-'} | {r['acc']:.3f} | {r['ppl']:.2f} | {r['sparsity']:.3f} "
              f"| {r['bits']} | {r['size_mb']:.1f} | {r['note']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
