"""Which integer grid for a model's embedding / LM head: perplexity with each grid's dequantized weight.

    python bench/embedding_grids.py --model slimtune-demo/final [--windows 4]

The tied (or input) embedding is replaced in memory by dequantize(quantize(W)) for each grid (float32
scales), and Wikipedia perplexity (--windows x 512 tokens, after the prefix token) is measured; the
first row is the model as it is. The compact export's `int8` / `int4` choices come from this (RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GRIDS = [(8, -1, True, "minmax"), (4, 32, False, "minmax"), (4, 32, False, "mse"), (4, 32, True, "mse"),
         (4, 16, False, "minmax")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from slimtune.data import load_text
    from slimtune.evaluate.perplexity import perplexity
    from slimtune.models import load_model
    from slimtune.quant.params import compute_params

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    text = load_text("wiki")
    weight = model.get_input_embeddings().weight
    original = weight.detach().clone()

    def measured() -> float:
        with torch.no_grad():
            return perplexity(model, tok, text, seq_len=512, max_windows=args.windows, progress=False)["perplexity"]

    print("| embedding | perplexity |\n|---|---:|")
    print(f"| {original.dtype} (as loaded) | {measured():.2f} |")
    for bits, group, symmetric, observer in GRIDS:
        params = compute_params(original, bits, group, symmetric, observer)
        with torch.no_grad():
            weight.copy_(params.dequantize(params.quantize(original)))
        where = "per row" if group == -1 else f"g{group}"
        print(f"| INT{bits} {where} {'symmetric' if symmetric else 'asymmetric'} {observer} | {measured():.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
