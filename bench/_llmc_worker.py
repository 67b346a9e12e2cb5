"""llm-compressor side of bench/sparsify.py and bench/quantize.py. Runs with the llm-compressor venv's
python (it must not import slimtune): loads an HF model directory, prunes or quantizes it with
llm-compressor's `oneshot` on the given calibration token ids, saves the result and prints one JSON
line with the timings.

    <venv>/bin/python bench/_llmc_worker.py --model DIR --calib ids.pt --method wanda --pattern 2:4 --out DIR
    <venv>/bin/python bench/_llmc_worker.py --model DIR --calib ids.pt --method gptq --group-size 64 \\
        --asymmetric [--actorder static] [--save dense] --out DIR

Pruning (wanda, sparsegpt): `WandaPruningModifier` / `SparseGPTModifier`; the pruned model is saved
as a plain (dense, explicit zeros) HF directory.

Quantization (gptq): `GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
weights=QuantizationArgs(num_bits, type="int", symmetric, strategy="group", group_size))},
ignore=["lm_head"], dampening_frac, block_size, actorder)`; actorder is always passed explicitly
(None = no activation ordering; llm-compressor's default would be "static"). Saved with
--save compressed: `save_pretrained(save_compressed=True)`, compressed-tensors pack-quantized;
--save dense: `save_pretrained(save_compressed=False)` (fake-quantized fp32 weights), then turned
into a plain HF directory: the weight_scale / weight_zero_point / weight_g_idx tensors and the
quantization_config are dropped, so any loader reads the dequantized weights as ordinary Linear
weights.

Timed: the `oneshot(...)` call only (the model is already loaded; saving comes after), wall clock
(`time.perf_counter`) and process CPU time (`time.process_time`, all threads). Also reported: the
fraction of exact zeros in the targeted linears before and after, how many of the zeros it was given
stayed zero, and check_loss, the model's loss on the first calibration sequence right after oneshot
(the driver recomputes it on the saved directory to prove that what it evaluates is what was made).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

QUANT_KEYS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_global_scale")


def _zero_masks(model, torch) -> dict:
    return {name: (m.weight == 0) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


def _to_plain_dense(out) -> None:
    """Drop llm-compressor's quantization tensors and config from a save_compressed=False directory."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    out = Path(out)
    for f in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(f))
        kept = {k: v for k, v in tensors.items() if k.rpartition(".")[2] not in QUANT_KEYS}
        save_file(kept, str(f), metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.exists():
        idx = json.loads(index.read_text())
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if k.rpartition(".")[2] not in QUANT_KEYS}
        index.write_text(json.dumps(idx, indent=2))
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="torch.save'd LongTensor [n, seq_len]")
    ap.add_argument("--method", choices=["wanda", "sparsegpt", "gptq"], required=True,
                    help="wanda / sparsegpt: pruning; gptq: weight quantization")
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--asymmetric", action="store_true", help="gptq: asymmetric grid (default symmetric)")
    ap.add_argument("--actorder", choices=["none", "static", "group", "weight"], default="none",
                    help="gptq: activation ordering (passed explicitly; 'none' turns it off)")
    ap.add_argument("--observer", default=None, help="gptq: weight observer (default: llm-compressor's, min-max)")
    ap.add_argument("--save", choices=["compressed", "dense"], default="compressed",
                    help="gptq: pack-quantized directory, or plain HF directory of fake-quantized weights")
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

    torch.set_num_threads(args.threads)
    ids = torch.load(args.calib)
    n, seq_len = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    extra = {}
    if args.method == "gptq":
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=not args.asymmetric, strategy="group",
                                   group_size=args.group_size, observer=args.observer)
        recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                              ignore=["lm_head"], dampening_frac=args.damp, block_size=args.block_size,
                              actorder=None if args.actorder == "none" else args.actorder)
        extra = {"bits": args.bits, "group_size": args.group_size, "symmetric": not args.asymmetric,
                 "actorder": args.actorder, "observer": args.observer, "saved": args.save}
    else:
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

        mask = "0:0" if args.pattern == "unstructured" else args.pattern
        common = dict(sparsity=args.sparsity, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"])
        if args.method == "wanda":
            recipe = WandaPruningModifier(**common)
        else:
            recipe = SparseGPTModifier(**common, dampening_frac=args.damp, block_size=args.block_size)
        extra = {"pattern": args.pattern}
    before = _zero_masks(model, torch)

    t0, c0 = time.perf_counter(), time.process_time()
    model = oneshot(model=model, tokenizer=tokenizer, dataset=ds, recipe=recipe, num_calibration_samples=n,
                    max_seq_length=seq_len, shuffle_calibration_samples=False, batch_size=args.batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    zeros = total = zeros_before = kept = 0
    for name, m in model.named_modules():
        if name in before:
            after = m.weight == 0
            zeros += int(after.sum())
            total += after.numel()
            zeros_before += int(before[name].sum())
            kept += int((after & before[name]).sum())
    model.eval()
    with torch.no_grad():
        check_loss = float(model(ids[:1], labels=ids[:1]).loss)
    if args.method == "gptq":
        model.save_pretrained(args.out, save_compressed=args.save == "compressed")
        if args.save == "dense":
            _to_plain_dense(args.out)
    else:
        model.save_pretrained(args.out, save_compressed=False)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"side": "llmc", "method": args.method, **extra, "n_samples": n,
                      "seq_len": seq_len, "wall_s": wall, "cpu_s": cpu, "sparsity": zeros / max(total, 1),
                      "sparsity_before": zeros_before / max(total, 1),
                      "zeros_kept": kept / zeros_before if zeros_before else None, "check_loss": check_loss,
                      "llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
                      "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
