"""LoNAS (issue 16): LoRA vs LoNAS heuristic vs LoNAS searched, trained, merged and measured; and the
untrained width sub-networks' size and speed.

    python bench/lonas.py --task suite:commonsense-evals --limit 1000 --keep /tmp/lonas   # the comparison
    python bench/lonas.py --quick                        # tiny random Llama, short runs: a smoke test
    python bench/lonas.py --task evals:quartz --width-order magnitude --sampler sandwich --keep /tmp/lonas  # variants
    python bench/lonas.py --widths mlp --distill --keep /tmp/lonas       # MLP widths only; distilled from the LoRA
    python bench/lonas.py --widths-only [--prefill 64 --decode 8 --repeats 3]   # no training: base weights

The comparison (split seed 0, held-out test examples, the lineage check refuses any overlap with
training or selection), on the dense base, LoNAS' reference settings (r 32, alpha 64, dropout 0.1,
lr 3e-4, q/k/v/gate/up/down adapted), the same steps and data for every run:
  LoRA            a rank-32 LoRA, merged: the model LoNAS is measured against
  LoNAS heuristic one super-network (ranks [32, 28] shared as Shears' groups; MLP width 100/87.5/75/62.5/50%
                  and attention heads in whole KV groups, elastic), its median configuration extracted and
                  merged into a physically smaller model
  LoNAS searched  the same super-network searched (NSGA-II, validation accuracy vs total parameters,
                  --trials on --search-limit validation examples), the most accurate trial within --budget
                  of the maximal parameters (strictly) extracted and merged
  --distill       (beyond LoNAS) the super-network's sampled sub-networks learn the merged LoRA's next-token
                  distributions, 0.1 CE + 0.9 T^2 KL at T = 2 (finetune --teacher), instead of the labels alone
Reported per model: test accuracy (a suite: the macro average) with its 95% bootstrap interval,
parameters, MACs per token (linear + attention at 128 positions), CPU prefill and greedy-decode
latency (min over --repeats interleaved rounds), and paired differences against LoRA on the same
examples. --widths-only measures the untrained base's sub-networks (each checked against the
width-sliced full model, logits within 1e-4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slimtune.models import load_model  # noqa: E402
from slimtune.nas import SearchSpace  # noqa: E402
from slimtune.nas.lonas import linear_macs, width_dimensions  # noqa: E402
from slimtune.nas.subnetwork import extract_subnetwork  # noqa: E402


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def measure(models: dict, ids, decode: int, repeats: int) -> dict[str, dict]:
    """Min over `repeats` rounds, the models interleaved within each round (a shared, loaded CPU makes
    single timings noisy; the minimum and the interleaving keep the comparison fair)."""
    times = {k: {"prefill": [], "decode": []} for k in models}
    for round_ in range(repeats + 1):  # round 0 warms up
        for label, net in models.items():
            p = _timed(lambda: net(input_ids=ids))
            d = _timed(lambda: net.generate(ids[:, :16], max_new_tokens=decode, min_new_tokens=decode,
                                            do_sample=False))
            if round_:
                times[label]["prefill"].append(p)
                times[label]["decode"].append(d)
    return {k: {"prefill_ms": 1000 * min(v["prefill"]), "decode_ms_per_token": 1000 * min(v["decode"]) / decode}
            for k, v in times.items()}


def widths_only(args) -> None:
    """Size and speed of the base model's full, median and minimal width sub-networks (no training)."""
    net, _ = load_model(args.model)
    net.eval()
    space = SearchSpace(width_dimensions(net, ["mlp", "heads"]))
    ids = torch.randint(0, net.config.vocab_size, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    configs = {"full": space.maximal(), "median (LoNAS heuristic)": space.median(), "minimal": space.minimal()}
    rows, models = [], {}
    for label, config in configs.items():
        small = extract_subnetwork(net, space, config) if label != "full" else net
        if label != "full":
            space.apply(net, config)
            with torch.no_grad():
                diff = (small(input_ids=ids[:, :32]).logits - net(input_ids=ids[:, :32]).logits).abs().max().item()
            space.apply(net, space.maximal())
            assert diff <= 1e-4, f"{label}: extracted logits differ from the sliced model by {diff}"
        models[label] = small
        rows.append({"config": label, "intermediate": small.config.intermediate_size,
                     "kv_heads": small.config.num_key_value_heads, "params": sum(p.numel() for p in small.parameters()),
                     "linear_macs_per_token": linear_macs(net, space, config)})
    speed = measure(models, ids, args.decode, args.repeats)
    for row in rows:
        row.update(speed[row["config"]])
        print(json.dumps(row), flush=True)
    full = rows[0]
    print(f"\n| sub-network | intermediate | KV heads | params | linear MACs/token | prefill {args.prefill} tok (ms) "
          f"| decode (ms/token) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['intermediate']} | {r['kv_heads']} | {r['params'] / 1e6:.1f} M "
              f"({r['params'] / full['params']:.0%}) | {r['linear_macs_per_token'] / 1e6:.1f} M "
              f"({r['linear_macs_per_token'] / full['linear_macs_per_token']:.0%}) | {r['prefill_ms']:.0f} "
              f"({full['prefill_ms'] / r['prefill_ms']:.2f}x) | {r['decode_ms_per_token']:.1f} "
              f"({full['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="suite:commonsense-evals")
    ap.add_argument("--seed", type=int, default=42, help="training seed (the split seed is the task's: 0)")
    ap.add_argument("--max-steps", type=int, default=200, help="optimizer steps of the LoRA and the super-network")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--trials", type=int, default=16, help="search trials (NSGA-II; maximal, median, minimal first)")
    ap.add_argument("--search-limit", type=int, default=200, help="validation examples each search trial scores")
    ap.add_argument("--budget", type=float, default=0.85, help="the searched pick: at most this share of the "
                                                               "maximal total parameters")
    ap.add_argument("--limit", type=int, default=None, help="score the first N test examples (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=64, help="prompt tokens of the prefill measurement")
    ap.add_argument("--decode", type=int, default=8, help="greedy tokens of the decode measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", default=None, help="artifact directory (default: a temp dir); finished artifacts are reused")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, short runs")
    ap.add_argument("--widths-only", action="store_true", help="no training: the base's width sub-networks")
    ap.add_argument("--width-order", default="original", choices=["original", "magnitude"],
                    help="super-network channels / heads in their order (LoNAS') or largest-norm first")
    ap.add_argument("--sampler", default="uniform", choices=["uniform", "sandwich"],
                    help="super-network configurations per step: one random (LoNAS') or maximal + random + minimal")
    ap.add_argument("--widths", default="mlp,heads", choices=["mlp,heads", "mlp", "heads"],
                    help="elastic base widths of the super-network (LoNAS' LLaMA setting: mlp)")
    ap.add_argument("--distill", action="store_true", help="the super-network learns the merged LoRA's next-token "
                    "distributions (finetune --teacher: 0.1 CE + 0.9 T^2 KL at T = 2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.widths_only:
        widths_only(args)
    else:
        from lonas_accuracy import compare

        compare(args)


if __name__ == "__main__":
    main()
