"""`slimtune <stage> ...`: thin wrappers over slimtune.api."""

from __future__ import annotations

import argparse
import json
import sys

from .cli_args import add_config_arguments, add_overwrite, config_from_args
from .cli_extra import add_diagnose, add_eftnas, add_generate, add_refactor, run_extra
from .configs import STAGE_CONFIGS, InspectConfig
from .errors import SlimtuneError
from .guards import finite_float
from .models import BUILTIN_MODELS, DEFAULT_MODEL

MODEL_HELP = (f"model: a builtin alias ({', '.join(BUILTIN_MODELS)}), a local Hugging Face directory "
              f"(also slimtune artifacts), a .gguf file, or a hub id when online (default: {DEFAULT_MODEL})")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy on a task and/or perplexity on a text",
                       description="Evaluate a model (optionally with an adapter): task accuracy on one split "
                                   "(multiple-choice log-likelihood acc/acc_norm, or generation accuracy) and "
                                   "windowed perplexity on a text. Prints JSON.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--adapter", help="a LoRA adapter directory (PEFT format) to apply before evaluating")
    p.add_argument("--out", help="also write the results JSON to this file")
    add_config_arguments(p, STAGE_CONFIGS["evaluate"])


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
    p.add_argument("--out", help="also write both results and the difference as JSON to this file")
    add_config_arguments(p, STAGE_CONFIGS["compare"])


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="train a LoRA adapter on a task",
                       description="Fine-tune a LoRA adapter on the task's training split with transformers' "
                                   "Trainer on the task's training split (fixed by --split-seed). Writes a PEFT adapter "
                                   "directory with a slimtune.json manifest: a plain LoRA loads with peft.PeftModel; "
                                   "sparse and quantization-aware adapters load only in slimtune (use `slimtune merge`), "
                                   "since stock PEFT would compute another function. Re-running the same command after an interruption "
                                   "resumes from the last checkpoint.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output adapter directory (must not exist unless --overwrite)")
    add_overwrite(p, ", and start afresh instead of refusing checkpoints left by another configuration")
    add_config_arguments(p, STAGE_CONFIGS["finetune"])


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="export a sub-adapter of an elastic (nls) super-adapter",
                       description="Pick one sub-adapter of an nls super-adapter and write it as a standard PEFT LoRA "
                                   "(per-module ranks in rank_pattern, the super-adapter's scaling kept through "
                                   "alpha_pattern), which `slimtune merge` merges and, unless it is sparse or quantization-aware, "
                                   "peft.PeftModel loads.")
    p.add_argument("--adapter", help="super-adapter directory (slimtune finetune --adapter nls), or an EFTNAS "
                                     "super-network (slimtune supernet): then the output is the smaller model")
    p.add_argument("--out", required=True, help="output adapter directory")
    p.add_argument("--from-search", help="a `slimtune search` run directory: extract one of its trials (see --pick) "
                                         "instead of --select from --adapter")
    p.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    add_overwrite(p)
    add_config_arguments(p, STAGE_CONFIGS["extract"])


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="multi-objective search for sub-adapters of an nls super-adapter",
                       description="Search the rank groups of an elastic super-adapter with optuna (NSGA-II by default): "
                                   "maximise validation accuracy (or minimise validation loss) and minimise adapter size. "
                                   "The heuristic configurations are the first trials. Trials persist in SQLite inside "
                                   "--out (or in --storage); re-running resumes, and several workers given the same "
                                   "--out and --storage share the study and its trial budget. Writes trials.jsonl, "
                                   "pareto.json and pareto.png; `slimtune extract --from-search` exports a trial.")
    p.add_argument("--super-adapter", required=True, help="super-adapter directory (slimtune finetune --adapter nls), "
                                                          "or an EFTNAS super-network (slimtune supernet)")
    p.add_argument("--out", required=True, help="search run directory (created, or resumed)")
    p.add_argument("--model", help="base model (default: the one recorded in the super-adapter)")
    add_config_arguments(p, STAGE_CONFIGS["search"])


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
    add_overwrite(p)


def _add_sparsify(sub) -> None:
    p = sub.add_parser("sparsify", help="prune a model (magnitude, Wanda, SparseGPT)",
                       description="Prune every linear layer of the decoder (embeddings and the LM head stay dense) "
                                   "and save an HF model directory with explicit zeros. Wanda and SparseGPT calibrate "
                                   "layer by layer: each block's inputs come from the already-pruned blocks.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output model directory")
    add_overwrite(p)
    add_config_arguments(p, STAGE_CONFIGS["sparsify"])


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model to INT2/3/4/8 (RTN, GPTQ), keeping its zeros",
                       description="Quantize every linear layer of the decoder (embeddings and the LM head stay in "
                                   "float) onto a group-wise integer grid and save a compressed-tensors pack-quantized "
                                   "HF directory, which transformers loads. Zero weights of a sparse base stay exactly "
                                   "zero. GPTQ calibrates layer by layer: each block's inputs come from the already-"
                                   "quantized blocks. The group size must divide every layer's input width (the error "
                                   "lists the sizes that do); -1 means one group per output row.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output model directory")
    add_overwrite(p)
    add_config_arguments(p, STAGE_CONFIGS["quantize"])


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer sparsity, parameters, MACs and latency of a model; ranks of an adapter",
                       description="Print what an artifact directory holds: per-matrix shape and sparsity and the total, "
                                   "parameters, MACs per token and per-block widths, with --latency measured CPU "
                                   "prefill/decode latency (models), or per-module ranks (adapters).")
    p.add_argument("path", help="a model or adapter directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_config_arguments(p, InspectConfig)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model as GGUF (llama.cpp), compressed-tensors with smaller embeddings, or "
                                      "slimtune's compact form",
                       description="gguf: OUT/model.gguf; a 4-bit grid with groups of a multiple of 32 is carried over "
                                   "exactly (symmetric -> Q4_0, asymmetric -> Q4_1), other grids are refused unless "
                                   "--requantize. compressed-tensors: a packed model re-written with --embeddings. compact: "
                                   "the same codes, non-zero ones behind a bitmask, --embeddings float or int8 / int4 "
                                   "(slimtune loads it).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output artifact directory")
    add_overwrite(p)
    add_config_arguments(p, STAGE_CONFIGS["export"])


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded default model and task",
                       description="The full SQFT pipeline on the embedded default model and task: prune 50% with "
                                   "Wanda, quantize INT4 with GPTQ, fine-tune a QA-SparsePEFT + NLS adapter, pick the "
                                   "sub-adapter on the validation split, merge it onto the INT4 grid, export it with a float16 "
                                   "embedding, and print a table of the dense base, the sparse-INT4 base, the final "
                                   "model and its export. All offline; re-running skips finished stages.")
    p.add_argument("--out", default="slimtune-demo", help="run directory (default ./slimtune-demo)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--task", default=None, help="task: a builtin name, bigbench:<name>, evals:<name>, a file or hf:<dataset> (default: the demo's, evals:quartz)")
    p.add_argument("--epochs", type=finite_float, default=None, help="fine-tuning epochs (default: the demo's setting)")
    p.add_argument("--max-windows", type=int, default=4, help="perplexity windows of 512 tokens on the Wikipedia text (default 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimtune", description="Sparsify, quantize, fine-tune, merge and evaluate language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_evaluate, _add_compare, _add_sparsify, _add_quantize, _add_finetune, _add_extract, _add_search,
                _add_merge, add_refactor, add_diagnose, add_eftnas, _add_inspect, _add_export, _add_run,
                _add_report, _add_demo):
        add(sub)
    add_generate(sub, MODEL_HELP, DEFAULT_MODEL)
    return parser


def _run(args: argparse.Namespace) -> None:
    from . import api

    if args.command in STAGE_CONFIGS:
        config = config_from_args(STAGE_CONFIGS[args.command], args)
    if args.command == "evaluate":
        result = api.evaluate(args.model, adapter=args.adapter, out=args.out, config=config)
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

        result = api.compare(args.model_a, args.model_b, adapter_a=args.adapter_a, adapter_b=args.adapter_b,
                             out=args.out, config=config)
        print(format_comparison(result))
        for r in (result["a"], result["b"]):
            if (r.get("held_out") or {}).get("warning"):
                print(r["held_out"]["warning"], file=sys.stderr)
    elif args.command == "finetune":
        out = api.finetune(args.model, out=args.out, overwrite=args.overwrite, config=config)
        print(f"adapter written to {out}")
    elif args.command == "extract":
        out = api.extract(args.adapter, out=args.out, from_search=args.from_search, model=args.model,
                          overwrite=args.overwrite, config=config)
        print(f"sub-adapter ({json.loads((out / 'slimtune.json').read_text())['method']}) written to {out}")
    elif args.command == "search":
        out = api.search(args.super_adapter, out=args.out, model=args.model, config=config)
        metrics = json.loads((out / "slimtune.json").read_text())["metrics"]
        print(f"{metrics['completed_trials']} trials, {metrics['pareto_size']} on the Pareto front; "
              f"{out}/pareto.json, {out}/pareto.png")
        for r in json.loads((out / "pareto.json").read_text())["front"]:  # latency objectives in ms
            print(f"  trial {r['trial']}: " + ", ".join(f"{k} {v:.6g}" for k, v in r["objectives"].items())
                  + (f" ({r['heuristic']})" if r.get("heuristic") else ""))
    elif args.command == "run":
        from .recipe import run_recipe

        overrides = {k: v for k, v in (("model", args.model), ("task", args.task), ("split_seed", args.split_seed))
                     if v is not None}
        run_recipe(args.recipe, args.out, overrides=overrides)
    elif args.command == "report":
        from .report import build_report

        print(f"report written to {build_report(args.run_dir)}")
    elif args.command in ("refactor", "diagnose", "importance", "space", "supernet", "generate"):
        run_extra(args)
    elif args.command == "merge":
        out = api.merge(args.adapter, out=args.out, model=args.model, overwrite=args.overwrite)
        print(f"merged model written to {out}")
    elif args.command in ("sparsify", "quantize"):
        out = getattr(api, args.command)(args.model, out=args.out, overwrite=args.overwrite, config=config)
        from .summary import format_summary

        print(format_summary(api.inspect(out)))
    elif args.command == "export":
        from .deploy.export import export

        out = export(args.model, out=args.out, overwrite=args.overwrite, config=config)
        print(out)
    elif args.command == "inspect":
        from .summary import format_summary

        summary = api.inspect(args.path, config=config_from_args(InspectConfig, args))
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
