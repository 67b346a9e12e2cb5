"""llm-compressor side of bench/sparsify.py. Runs with the llm-compressor venv's python (it must not
import slimtune): loads an HF model directory, prunes it with llm-compressor's `oneshot` on the given
calibration token ids, saves the pruned model as a plain (dense, explicit zeros) HF directory and prints
one JSON line with the timings.

    <venv>/bin/python bench/_llmc_worker.py --model DIR --calib ids.pt --method wanda --pattern 2:4 --out DIR

Timed: the `oneshot(...)` call only (the model is already loaded; saving comes after), wall clock
(`time.perf_counter`) and process CPU time (`time.process_time`, all threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="torch.save'd LongTensor [n, seq_len]")
    ap.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1, help="oneshot batch_size (llm-compressor's default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    torch.set_num_threads(args.threads)
    ids = torch.load(args.calib)
    n, seq_len = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    mask = "0:0" if args.pattern == "unstructured" else args.pattern
    common = dict(sparsity=args.sparsity, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"])
    if args.method == "wanda":
        recipe = WandaPruningModifier(**common)
    else:
        recipe = SparseGPTModifier(**common, dampening_frac=args.damp, block_size=args.block_size)

    t0, c0 = time.perf_counter(), time.process_time()
    model = oneshot(model=model, tokenizer=tokenizer, dataset=ds, recipe=recipe, num_calibration_samples=n,
                    max_seq_length=seq_len, shuffle_calibration_samples=False, batch_size=args.batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    zeros = total = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    model.save_pretrained(args.out, save_compressed=False)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"side": "llmc", "method": args.method, "pattern": args.pattern, "n_samples": n,
                      "seq_len": seq_len, "wall_s": wall, "cpu_s": cpu, "sparsity": zeros / max(total, 1),
                      "llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
                      "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
