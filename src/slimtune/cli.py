"""`slimtune <stage> ...`: thin wrappers over slimtune.api."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import SlimtuneError
from .guards import finite_float
from .models import BUILTIN_MODELS, DEFAULT_MODEL

MODEL_HELP = (f"model: a builtin alias ({', '.join(BUILTIN_MODELS)}), a local Hugging Face directory "
              f"(also slimtune artifacts), a .gguf file, or a hub id when online (default: {DEFAULT_MODEL})")
TASK_HELP = ("task: a builtin name (polarity, gsm_symbolic, bigbench:<name>), a .jsonl/.csv file of "
             "your own, or hf:<dataset> (default: polarity)")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,24,16, got {value!r}") from None


SPLIT_SEED_HELP = ("seed of the task's train/validation/test split, which belongs to the task, not to the run "
                   "(default: the split seed the model's lineage used for this task, else 0)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy on a task and/or perplexity on a text",
                       description="Evaluate a model (optionally with an adapter): task accuracy on one split "
                                   "(multiple-choice log-likelihood acc/acc_norm, or generation accuracy) and "
                                   "windowed perplexity on a text. Prints JSON.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--adapter", help="a LoRA adapter directory (PEFT format) to apply before evaluating")
    p.add_argument("--task", default="polarity", help=TASK_HELP + "; pass 'none' for perplexity only")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="which split to score (default: test)")
    p.add_argument("--limit", type=int, help="score only the first N examples of the split")
    p.add_argument("--perplexity-text", help="also measure perplexity on this text: 'wiki', 'news' or a UTF-8 file")
    p.add_argument("--seq-len", type=int, default=512, help="perplexity window length in tokens (default 512)")
    p.add_argument("--max-windows", type=int, help="perplexity over at most this many windows (default: the whole text)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, help=SPLIT_SEED_HELP)
    p.add_argument("--allow-overlap", action="store_true",
                   help="report even on examples the model's lineage trained or selected on (the output says so)")
    p.add_argument("--out", help="also write the results JSON to this file")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="two models on the same examples: accuracies and their paired difference",
                       description="Evaluate models A and B (each optionally with an adapter) on the same examples of "
                                   "one task split and print each accuracy with its 95%% bootstrap interval and the "
                                   "paired difference A - B with its interval (per member and on the macro average "
                                   "for a suite). A difference whose interval holds 0 is not a result.")
    p.add_argument("model_a", help="model A: " + MODEL_HELP)
    p.add_argument("model_b", help="model B: " + MODEL_HELP)
    p.add_argument("--adapter-a", help="a LoRA adapter directory to apply to model A")
    p.add_argument("--adapter-b", help="a LoRA adapter directory to apply to model B")
    p.add_argument("--task", default="polarity", help=TASK_HELP + "; suite:commonsense and suite:math report per member")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="which split to score (default: test)")
    p.add_argument("--limit", type=int, help="score only the first N examples of the split")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--split-seed", dest="split_seed", type=int, help=SPLIT_SEED_HELP)
    p.add_argument("--allow-overlap", action="store_true",
                   help="report even on examples a model's lineage trained or selected on (the output says so)")
    p.add_argument("--out", help="also write both results and the difference as JSON to this file")


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train a LoRA adapter on a task",
                       description="Fine-tune a LoRA adapter on the task's training split with transformers' "
                                   "Trainer on the task's training split (fixed by --split-seed). Writes a PEFT adapter "
                                   "directory with a slimtune.json manifest: a plain LoRA loads with peft.PeftModel; "
                                   "sparse and quantization-aware adapters load only in slimtune (use `slimtune merge`), "
                                   "since stock PEFT would compute another function. Re-running the same command after an interruption "
                                   "resumes from the last checkpoint.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--task", default="polarity", help=TASK_HELP)
    p.add_argument("--out", required=True, help="output adapter directory (must not exist unless --overwrite)")
    p.add_argument("--targets", type=_csv, help="comma-separated module-name patterns to adapt, e.g. q_proj,v_proj "
                   "(suffix match, or a regex on the full name); default: all attention and MLP projections")
    p.add_argument("--adapter", default="lora", choices=["lora", "nls"],
                   help="lora: one fixed rank; nls: an elastic super-adapter whose rank groups are sampled from "
                        "--rank-space once per optimizer step (Shears/SQFT), for `slimtune extract` (default lora)")
    p.add_argument("--rank", type=int, help="LoRA rank r, the maximal rank for nls (default 16 for lora, 32 for nls)")
    p.add_argument("--rank-space", type=_ints, help="nls: descending ranks, the first being the maximal one "
                                                    "(default r,3r/4,r/2, e.g. 32,24,16)")
    p.add_argument("--groups", default="shears", choices=["shears", "block", "module"],
                   help="nls: modules sharing a rank: shears = per block [q,k,v], [gate,up], [down], others alone; "
                        "block = one rank per block (NNCF); module = every module alone (default shears)")
    p.add_argument("--alpha", type=finite_float, default=32.0, help="LoRA alpha; the update is scaled by alpha/r (alpha/r_max "
                                                             "for every nls sub-adapter) (default 32)")
    p.add_argument("--dropout", type=finite_float, help="dropout on the adapter's input (default 0.05; 0 and the only choice "
                                                 "with --sparse-adapter or --quant-aware)")
    p.add_argument("--sparse-adapter", action="store_true",
                   help="SparsePEFT: mask the update by the base's zeros, in training and in merge, so the merged "
                        "model keeps the base's sparsity (needs a sparse base)")
    p.add_argument("--quant-aware", action="store_true",
                   help="QA-SparsePEFT: train through the quantized base's own grid (straight-through), so the "
                        "merge lands on the same INT grid exactly (needs a `slimtune quantize` base)")
    p.add_argument("--qa-weights", default="auto", choices=["auto", "float", "quantized"],
                   help="--quant-aware: merge the update into the float weights before quantization (SQFT's choice; "
                        "trains well) or into the dequantized base (starts exactly at the GPTQ model, but an update "
                        "counts only once it crosses half a grid step, so it learns slowly); auto: float when the "
                        "float model is known, else quantized (default auto)")
    p.add_argument("--float-base", help="--qa-weights float: the float model the base was quantized from "
                                        "(default: the one the quantized base's manifest records)")
    p.add_argument("--epochs", type=finite_float, help="passes over the training split (default 3)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--lr", dest="learning_rate", type=finite_float, help="peak learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, help="examples per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--max-length", type=int, help="cut sequences to this many tokens (default 256)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 10)")
    p.add_argument("--lr-scheduler", choices=["cosine", "linear", "constant", "constant_with_warmup"], help="learning-rate schedule (default cosine)")
    p.add_argument("--save-steps", type=int, help="checkpoint every N optimizer steps (default 50)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute activations in backward to save memory")
    p.add_argument("--seed", type=int, help="seed of the adapter's initialisation, the data order and NLS sampling (default 42)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the task's train/validation/test split, separate from --seed (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a slimtune artifact or an empty directory (never other files), and "
                        "start afresh instead of refusing checkpoints left by another configuration")


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="export a sub-adapter of an elastic (nls) super-adapter",
                       description="Pick one sub-adapter of an nls super-adapter and write it as a standard PEFT LoRA "
                                   "(per-module ranks in rank_pattern, the super-adapter's scaling kept through "
                                   "alpha_pattern), which `slimtune merge` merges and, unless it is sparse or quantization-aware, "
                                   "peft.PeftModel loads.")
    p.add_argument("--adapter", help="super-adapter directory (slimtune finetune --adapter nls)")
    p.add_argument("--out", required=True, help="output adapter directory")
    p.add_argument("--from-search", help="a `slimtune search` run directory: extract one of its trials (see --pick) "
                                         "instead of --select from --adapter")
    p.add_argument("--pick", default="knee", help="with --from-search: best-accuracy | smallest | knee (of the Pareto "
                                                  "front) | trial=N (default knee)")
    p.add_argument("--select", default="median",
                   help="maximal | median | minimal | nncf (the best on the task's VALIDATION split of the median, the "
                        "most frequently sampled and the 5 lowest-loss training configurations) | a JSON object "
                        "{group: rank}, groups as in elastic_config.json (default median)")
    p.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    p.add_argument("--task", help="nncf: task whose validation split scores the candidates (default: the training task)")
    p.add_argument("--limit", type=int, help="nncf: score on the first N validation examples")
    p.add_argument("--split-seed", type=int, help="nncf: " + SPLIT_SEED_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a slimtune artifact or an empty directory (never other files)")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="multi-objective search for sub-adapters of an nls super-adapter",
                       description="Search the rank groups of an elastic super-adapter with optuna (NSGA-II by default): "
                                   "maximise validation accuracy (or minimise validation loss) and minimise adapter size. "
                                   "The heuristic configurations are the first trials. Trials persist in SQLite inside "
                                   "--out (or in --storage); re-running resumes, and several workers given the same "
                                   "--out and --storage share the study and its trial budget. Writes trials.jsonl, "
                                   "pareto.json and pareto.png; `slimtune extract --from-search` exports a trial.")
    p.add_argument("--super-adapter", required=True, help="super-adapter directory (slimtune finetune --adapter nls)")
    p.add_argument("--out", required=True, help="search run directory (created, or resumed)")
    p.add_argument("--task", help="task whose validation split is scored (default: the super-adapter's training task)")
    p.add_argument("--objectives", type=_csv, default=["accuracy", "params"],
                   help="comma-separated: accuracy or loss, and params (adapter parameters) or nonzero (non-zero base "
                        "weights + adapter parameters) (default accuracy,params)")
    p.add_argument("--trials", type=int, default=30, help="completed trials in all, over all workers (default 30)")
    p.add_argument("--storage", help="optuna storage URL shared by workers, e.g. sqlite:///runs/s.db or "
                                     "postgresql://user@host/db (default: sqlite in --out)")
    p.add_argument("--study-name", default="slimtune-search", help="study name inside the storage")
    p.add_argument("--sampler", default="nsga2", choices=["nsga2", "nsga3", "tpe", "random"],
                   help="optuna sampler (default nsga2)")
    p.add_argument("--population", type=int, help="NSGA-II/III population size (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--limit", type=int, help="score on the first N validation examples (the same slice every trial)")
    p.add_argument("--split-seed", type=int, help=SPLIT_SEED_HELP)
    p.add_argument("--model", help="base model (default: the one recorded in the super-adapter)")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run the stages of a recipe (YAML)",
                       description="Run a recipe: its stages in order, each writing its artifact into --out/<stage "
                                   "name>, then report.md. The whole recipe is validated first. Re-running skips "
                                   "complete stages whose config and inputs are unchanged and resumes an interrupted "
                                   "one. See examples/recipes/.")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--task", help="override the recipe's task")
    p.add_argument("--split-seed", type=int, help="override the recipe's split seed (default 0)")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild the report of a recipe run",
                       description="Rebuild report.md, metrics.json and the PNG plots of a `slimtune run` directory "
                                   "from its artifacts.")
    p.add_argument("run_dir", help="a `slimtune run` output directory")


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="fold an adapter into its base model",
                       description="Merge a LoRA adapter into its base model and save a Hugging Face model directory "
                                   "whose outputs equal the adapted model's. A SparsePEFT adapter keeps the base's "
                                   "zeros; a quantization-aware one lands on the INT base's own grid (packed, same "
                                   "scales and zero points); a plain adapter on a quantized base gives a float model "
                                   "to re-quantize.")
    p.add_argument("--adapter", required=True, help="adapter directory written by `slimtune finetune` (or any PEFT LoRA)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a slimtune artifact or an empty directory (never other files)")


def _add_calibration_and_output(p, methods: str, left: str) -> None:
    p.add_argument("--calibration", default="news",
                   help=f"{methods} calibration text: 'news', 'wiki' or a UTF-8 file (default news)")
    p.add_argument("--samples", type=int, default=16, help="calibration sequences (default 16)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking calibration windows (default 0)")
    p.add_argument("--calibration-batch", type=int, default=16,
                   help="calibration sequences per forward pass (default 16); lower it to save memory. Pruning "
                        "with all samples in one batch runs every block once (see README)")
    p.add_argument("--skip", type=_csv, help=f"comma-separated module patterns to leave {left} (default: the LM head)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a slimtune artifact or an empty directory (never other files)")


def _calibration(args) -> dict:
    return {"source": args.calibration, "n_samples": args.samples, "seq_len": args.seq_len, "seed": args.seed,
            "batch_size": args.calibration_batch}


def _add_sparsify(sub) -> None:
    p = sub.add_parser("sparsify", help="prune a model (magnitude, Wanda, SparseGPT)",
                       description="Prune every linear layer of the decoder (embeddings and the LM head stay dense) "
                                   "and save an HF model directory with explicit zeros. Wanda and SparseGPT calibrate "
                                   "layer by layer: each block's inputs come from the already-pruned blocks.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"], help="pruning method (default wanda)")
    p.add_argument("--sparsity", type=finite_float, help="fraction of weights to zero, in [0, 1) (default 0.5; implied by an N:M pattern)")
    p.add_argument("--pattern", default="unstructured", help="'unstructured' (exact count per row) or N:M, e.g. 2:4 or 4:8 (keep N of every M inputs)")
    p.add_argument("--damp", type=finite_float, help="SparseGPT: Hessian dampening as a fraction of its mean diagonal (default 0.01)")
    p.add_argument("--block-size", type=int, help="SparseGPT: columns per block (default 128)")
    _add_calibration_and_output(p, "Wanda/SparseGPT", "dense")


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model to INT2/3/4/8 (RTN, GPTQ), keeping its zeros",
                       description="Quantize every linear layer of the decoder (embeddings and the LM head stay in "
                                   "float) onto a group-wise integer grid and save a compressed-tensors pack-quantized "
                                   "HF directory, which transformers loads. Zero weights of a sparse base stay exactly "
                                   "zero. GPTQ calibrates layer by layer: each block's inputs come from the already-"
                                   "quantized blocks. The group size must divide every layer's input width (the error "
                                   "lists the sizes that do); -1 means one group per output row.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--method", default="gptq", choices=["rtn", "gptq"], help="quantization method (default gptq)")
    p.add_argument("--bits", type=int, default=4, help="bits per weight: 2, 3, 4 or 8 (default 4)")
    p.add_argument("--group-size", type=int, default=64, help="consecutive inputs sharing a scale and zero point, or -1 for one "
                                                              "group per output row (default 64)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--sym", dest="symmetric", action="store_true", default=True,
                      help="symmetric grid: zero point fixed at 2^(bits-1), scale from max|w| (default)")
    grid.add_argument("--asym", dest="symmetric", action="store_false",
                      help="asymmetric grid: min-max scale with an integer zero point per group")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ: quantize columns in order of decreasing Hessian diagonal (static groups, so the export "
                        "keeps contiguous groups; default on for gptq)")
    p.add_argument("--damp", type=finite_float, default=0.01, help="GPTQ: Hessian dampening as a fraction of its mean diagonal "
                                                           "(default 0.01)")
    p.add_argument("--observer", choices=["minmax", "mse", "imatrix"], default=None,
                   help="how each group's scale is chosen: minmax (the weights' range), mse (the shrunk range with the "
                        "least rounding error) or imatrix (mse weighted by each input's mean square activation; GPTQ "
                        "only). Default: imatrix for gptq, minmax for rtn")
    _add_calibration_and_output(p, "GPTQ", "in float")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer sparsity of a model, ranks of an adapter",
                       description="Print what an artifact directory holds: per-matrix shape and sparsity and the total "
                                   "(models), or per-module ranks (adapters).")
    p.add_argument("path", help="a model or adapter directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model as GGUF (llama.cpp) or compressed-tensors with smaller embeddings",
                       description="gguf: OUT/model.gguf; a 4-bit grid with groups of a multiple of 32 is carried over "
                                   "exactly (symmetric -> Q4_0, asymmetric -> Q4_1), other grids are refused unless "
                                   "--requantize. compressed-tensors: a packed model re-written with --embeddings.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output artifact directory")
    p.add_argument("--format", choices=["gguf", "compressed-tensors"], default="gguf")
    p.add_argument("--float-type", choices=["f16", "bf16", "q8_0", "f32"], default="f16",
                   help="gguf: type of float (not quantized) linear weights (default f16)")
    p.add_argument("--embed-type", choices=["q8_0", "f16", "bf16", "f32"], default="q8_0",
                   help="gguf: type of the token embedding / untied LM head (default q8_0; norms stay f32)")
    p.add_argument("--requantize", choices=["q4_0", "q4_1", "q8_0"], default=None,
                   help="gguf: re-quantize quantized layers whose grid GGUF cannot carry (off by default)")
    p.add_argument("--tokenizer-pre", default=None, help="gguf: llama.cpp pre-tokenizer name (default: detected)")
    p.add_argument("--embeddings", choices=["float16", "bfloat16"], default=None,
                   help="compressed-tensors: dtype of the stored embedding / LM head")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output artifact")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded default model and task",
                       description="The full SQFT pipeline on the embedded default model and task: prune 50% with "
                                   "Wanda, quantize INT4 with GPTQ, fine-tune a QA-SparsePEFT + NLS adapter, pick the "
                                   "sub-adapter on the validation split, merge it onto the INT4 grid, and print a table "
                                   "of the dense base, the sparse-INT4 base and the final model. All offline; re-running "
                                   "skips finished stages.")
    p.add_argument("--out", default="slimtune-demo", help="run directory (default ./slimtune-demo)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--task", default=None, help=TASK_HELP + " (default: the demo's, bigbench:social_iqa)")
    p.add_argument("--epochs", type=finite_float, default=None, help="fine-tuning epochs (default: the demo's setting)")
    p.add_argument("--max-windows", type=int, default=4, help="perplexity windows of 512 tokens on the Wikipedia text (default 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimtune", description="Sparsify, quantize, fine-tune, merge and evaluate language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_evaluate, _add_compare, _add_sparsify, _add_quantize, _add_finetune, _add_extract, _add_search, _add_merge, _add_inspect, _add_export, _add_run,
                _add_report, _add_demo):
        add(sub)
    return parser


def _run(args: argparse.Namespace) -> None:
    from . import api

    if args.command == "evaluate":
        task = None if args.task.lower() == "none" else args.task
        result = api.evaluate(args.model, task=task, adapter=args.adapter, split=args.split, limit=args.limit,
                              perplexity_text=args.perplexity_text, seq_len=args.seq_len,
                              max_windows=args.max_windows, batch_size=args.batch_size, split_seed=args.split_seed,
                              allow_overlap=args.allow_overlap, out=args.out)
        from .evaluate import PER_EXAMPLE

        print(json.dumps({k: v for k, v in result.items() if k not in PER_EXAMPLE or k == "samples"}, indent=2))
        if "split_sizes" in result:
            sizes = ", ".join(f"{k} {v}" for k, v in result["split_sizes"].items())
            print(f"slimtune: scored {result['n']} {result['split']} examples of {result['task_spec']} "
                  f"(split seed {result['split_seed']}; splits: {sizes})", file=sys.stderr)
        if (result.get("held_out") or {}).get("warning"):
            print(result["held_out"]["warning"], file=sys.stderr)
        if result.get("drift_warning"):
            print(f"slimtune: warning: {result['drift_warning']}", file=sys.stderr)
    elif args.command == "compare":
        from .evaluate.compare import format_comparison

        result = api.compare(args.model_a, args.model_b, task=args.task, adapter_a=args.adapter_a,
                             adapter_b=args.adapter_b, split=args.split, limit=args.limit, batch_size=args.batch_size,
                             split_seed=args.split_seed, allow_overlap=args.allow_overlap, out=args.out)
        print(format_comparison(result))
        for r in (result["a"], result["b"]):
            if (r.get("held_out") or {}).get("warning"):
                print(r["held_out"]["warning"], file=sys.stderr)
    elif args.command == "finetune":
        overrides = {k: getattr(args, k) for k in ("epochs", "max_steps", "learning_rate", "batch_size", "grad_accum",
                                                   "max_length", "warmup_steps", "lr_scheduler", "save_steps",
                                                   "gradient_checkpointing", "seed")}
        out = api.finetune(args.model, task=args.task, out=args.out, targets=args.targets, adapter=args.adapter,
                           rank=args.rank, rank_space=args.rank_space, groups=args.groups, alpha=args.alpha,
                           dropout=args.dropout, sparse_adapter=args.sparse_adapter, quant_aware=args.quant_aware,
                           qa_weights=args.qa_weights, float_base=args.float_base, split_seed=args.split_seed,
                           overwrite=args.overwrite, **overrides)
        print(f"adapter written to {out}")
    elif args.command == "extract":
        out = api.extract(args.adapter, out=args.out, select=args.select, from_search=args.from_search, pick=args.pick,
                          model=args.model, task=args.task, limit=args.limit, split_seed=args.split_seed,
                          overwrite=args.overwrite)
        print(f"sub-adapter ({json.loads((out / 'slimtune.json').read_text())['method']}) written to {out}")
    elif args.command == "search":
        out = api.search(args.super_adapter, out=args.out, task=args.task, objectives=args.objectives,
                         trials=args.trials, storage=args.storage, study_name=args.study_name, sampler=args.sampler,
                         population=args.population, seed=args.seed, limit=args.limit, model=args.model,
                         split_seed=args.split_seed)
        metrics = json.loads((out / "slimtune.json").read_text())["metrics"]
        print(f"{metrics['completed_trials']} trials, {metrics['pareto_size']} on the Pareto front; "
              f"{out}/pareto.json, {out}/pareto.png")
    elif args.command == "run":
        from .recipe import run_recipe

        overrides = {k: v for k, v in (("model", args.model), ("task", args.task), ("split_seed", args.split_seed))
                     if v is not None}
        run_recipe(args.recipe, args.out, overrides=overrides)
    elif args.command == "report":
        from .report import build_report

        print(f"report written to {build_report(args.run_dir)}")
    elif args.command == "merge":
        out = api.merge(args.adapter, out=args.out, model=args.model, overwrite=args.overwrite)
        print(f"merged model written to {out}")
    elif args.command == "sparsify":
        options = {k: v for k, v in (("damp", args.damp), ("block_size", args.block_size)) if v is not None}
        out = api.sparsify(args.model, out=args.out, method=args.method, sparsity=args.sparsity, pattern=args.pattern,
                           calibration=None if args.method == "magnitude" else _calibration(args), skip=args.skip,
                           options=options or None, overwrite=args.overwrite)
        from .summary import format_summary

        print(format_summary(api.inspect(out)))
    elif args.command == "quantize":
        out = api.quantize(args.model, out=args.out, method=args.method, bits=args.bits, group_size=args.group_size,
                           symmetric=args.symmetric, act_order=args.act_order, damp=args.damp,
                           observer=args.observer,
                           calibration=_calibration(args) if args.method == "gptq" else None, skip=args.skip,
                           overwrite=args.overwrite)
        from .summary import format_summary

        print(format_summary(api.inspect(out)))
    elif args.command == "export":
        from .deploy.export import export

        out = export(args.model, out=args.out, format=args.format, float_type=args.float_type,
                     embed_type=args.embed_type, requantize=args.requantize, tokenizer_pre=args.tokenizer_pre,
                     embeddings=args.embeddings, overwrite=args.overwrite)
        print(out)
    elif args.command == "inspect":
        from .summary import format_summary

        summary = api.inspect(args.path)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    elif args.command == "demo":
        from .demo import TASK, run_demo

        run_demo(args.out, model=args.model, task=args.task or TASK, epochs=args.epochs, max_windows=args.max_windows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except SlimtuneError as e:
        print(f"slimtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
