"""LoNAS sub-networks: parameters, linear MACs per token and CPU latency of physically extracted
sub-networks vs the full model (issue 16). No training and no accuracy: this measures what the width
dimensions buy in size and speed, on the base model's weights (an adapter merges into the same shapes).

    python bench/lonas.py [--model smollm2-135m] [--threads 2] [--prefill 64] [--decode 8] [--repeats 3]

Each extracted model is checked against the width-sliced full model (logits within 1e-4).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=64, help="prompt tokens of the prefill measurement")
    ap.add_argument("--decode", type=int, default=8, help="greedy tokens of the decode measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()
