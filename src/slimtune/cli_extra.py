"""`slimtune refactor`, `slimtune diagnose intruders`, `slimtune importance`, `slimtune space`, `slimtune
supernet` and `slimtune generate`: thin wrappers over slimtune.api (api_extra.py, eftnas.py), kept beside cli.py for its length."""

from __future__ import annotations

import argparse
import json

from .cli_args import add_config_arguments, add_overwrite, config_from_args
from .configs import GenerateConfig, ImportanceConfig, IntrudersConfig, RefactorConfig, SpaceConfig, SupernetConfig


def add_refactor(sub) -> None:
    p = sub.add_parser("refactor", help="SVD re-factorization of an adapter, truncated to a rank or a budget",
                       description="Rewrite each module's update s*B*A as U*S*V^T (components ordered by singular "
                                   "value) and keep the top ones: the best approximation of that rank (Eckart-Young). "
                                   "Writes a fixed-rank PEFT LoRA (rank_pattern) in the adapter's own mode (sparse and "
                                   "quantization-aware adapters stay masked / on the grid at merge).")
    p.add_argument("--adapter", required=True, help="adapter directory (any LoRA; an nls super-adapter at its maximal rank)")
    p.add_argument("--out", required=True, help="output adapter directory")
    p.add_argument("--model", help="base model to record (default: the one recorded in the adapter)")
    add_overwrite(p)
    add_config_arguments(p, RefactorConfig)


def add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="diagnostics of a tuned model against its base (intruder dimensions)",
                       description="Diagnostics of a tuned model against its base.")
    which = p.add_subparsers(dest="diagnosis", required=True, metavar="DIAGNOSIS", help="intruders")
    q = which.add_parser("intruders", help="intruder dimensions of an adapter or a merged model",
                         description="Intruder dimensions (Shuttleworth et al. 2024): per adapted matrix, the top-k left "
                                     "singular vectors of the tuned weight whose |cosine| with every left singular vector "
                                     "of the base is below epsilon. The base is the one the adapter was trained on "
                                     "(dense, sparse, or the dequantized INT4 weights); the tuned weight is what merge "
                                     "writes (masked, and on the grid for quantization-aware adapters).")
    q.add_argument("--model", help="base model (default: the one the adapter or merged model records)")
    tuned = q.add_mutually_exclusive_group(required=True)
    tuned.add_argument("--adapter", help="an adapter directory, applied in its own mode")
    tuned.add_argument("--tuned", help="a merged (or fully fine-tuned) model directory to compare with --model")
    add_config_arguments(q, IntrudersConfig)
    q.add_argument("--out", help="also write the results JSON to this file")
    q.add_argument("--plot", help="write a plot (.png, .pdf or .svg) of the per-matrix similarities and counts")


def add_eftnas(sub) -> None:
    p = sub.add_parser("importance", help="first-order importance of heads and FFN neurons (EFTNAS)",
                       description="Scores -sum(W * dL/dW) per attention head and FFN neuron from forward/backward "
                                   "passes over a task's training split (a sequence classifier on its labels, a causal "
                                   "LM on its completions); writes importance.json.")
    p.add_argument("--model", required=True, help="a fine-tuned classifier or a causal LM")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite(p)
    add_config_arguments(p, ImportanceConfig)
    q = sub.add_parser("space", help="EFTNAS search space from importance; the model reordered by it",
                       description="Sort heads and neurons by importance (output-identical) and, for N budgets "
                                   "evenly spaced between a minimum and the full model (MACs or parameters), bisect an "
                                   "importance threshold until the kept units meet each budget within the tolerance; "
                                   "per layer the union of kept widths is its search space (elastic_config.json).")
    q.add_argument("--model", required=True, help="the model (a classifier or a causal LM)")
    q.add_argument("--importance", help="importance.json or its directory (default: the model's own)")
    q.add_argument("--out", required=True, help="output directory: reordered model + space")
    add_overwrite(q)
    add_config_arguments(q, SpaceConfig)
    r = sub.add_parser("supernet", help="train the EFTNAS super-network of a space (sandwich rule + distillation)",
                       description="Train every weight of a `slimtune space` output with several widths per optimizer "
                                   "step (sandwich: maximal, random, minimal) on a*CE + (1-a)*T^2*KL(teacher || student), "
                                   "the teacher's logits computed once per batch. Encoder classifiers and causal LMs. "
                                   "Then `slimtune search --super-adapter OUT --objectives accuracy,macs` and "
                                   "`slimtune extract --from-search ... --pick budget=0.5` give smaller models.")
    r.add_argument("--space", required=True, help="a `slimtune space` output (reordered model + elastic_config.json)")
    r.add_argument("--teacher", help="the model to distil from (default: the space's own model, the reordered "
                                     "fine-tuned teacher, output-identical to it)")
    r.add_argument("--out", required=True, help="output directory: the super-network")
    add_overwrite(r, ", and start afresh instead of refusing checkpoints left by another configuration")
    add_config_arguments(r, SupernetConfig)


def add_generate(sub, model_help: str, default_model: str) -> None:
    p = sub.add_parser("generate", help="greedy continuation of a prompt on the fast inference path",
                       description="Greedy decoding, batch 1, from a static KV cache (deploy/decode.py): a packed "
                                   "model runs its INT4 layers on torch's int4 kernel by default; --compile compiles "
                                   "the one-token step. Prints the continuation (--json: with timings).")
    p.add_argument("--model", default=default_model, help=model_help)
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--json", action="store_true", help="print JSON with the tokens and timings")
    add_config_arguments(p, GenerateConfig)


def run_extra(args: argparse.Namespace) -> None:
    from . import api

    if args.command == "importance":
        out = api.importance(args.model, out=args.out, overwrite=args.overwrite,
                             **config_from_args(ImportanceConfig, args))
        print(f"importance written to {out / 'importance.json'}")
    elif args.command == "space":
        from .nas.budgets import format_space

        out, result = api.space(args.model, out=args.out, importance=args.importance, overwrite=args.overwrite,
                                **config_from_args(SpaceConfig, args))
        print(format_space(result))
        print(f"reordered model and search space written to {out}")
    elif args.command == "supernet":
        out = api.supernet(args.space, out=args.out, teacher=args.teacher, overwrite=args.overwrite,
                           **config_from_args(SupernetConfig, args))
        print(f"super-network written to {out}")
    elif args.command == "refactor":
        out = api.refactor(args.adapter, out=args.out, model=args.model, overwrite=args.overwrite,
                           **config_from_args(RefactorConfig, args))
        metrics = json.loads((out / "slimtune.json").read_text())["metrics"]
        print(f"adapter of {metrics['adapter_parameters']} parameters (from {metrics['source_parameters']}; "
              f"Frobenius error of the update {metrics['frobenius_error']:.4g}) written to {out}")
    elif args.command == "generate":
        result = api.generate(args.model, args.prompt, **config_from_args(GenerateConfig, args))
        print(json.dumps(result, indent=1) if args.json else result["text"])
    elif args.command == "diagnose":
        from .diagnose import format_intruders

        result = api.diagnose_intruders(args.model, adapter=args.adapter, tuned=args.tuned, out=args.out,
                                        plot=args.plot, **config_from_args(IntrudersConfig, args))
        print(format_intruders(result))
