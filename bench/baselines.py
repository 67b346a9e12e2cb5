"""The related methods as baselines on a sparse INT4 base (issue 19): NLS (Shears/SQFT) vs AdaLoRA vs PaCA
vs LoRA, every one merged into a sparse INT4 model, on held-out examples with intervals over seeds.

    python bench/baselines.py                            # suite:commonsense-evals, seeds 42,43,44
    python bench/baselines.py --seeds 42 --limit 1000 --max-steps 100 --keep /tmp/sqft
    python bench/baselines.py --task evals:quartz        # one task of it
    python bench/baselines.py --quick                    # tiny random Llama: a smoke test

This is bench/sqft.py with the baselines' method list: the same Wanda 50% + GPTQ INT4 base, schedule,
held-out scoring, intruder counts and perplexity drift, so the two share artifacts under one --keep
directory (the QA-SparsePEFT rows are the same runs). Trainable parameters, at the fixed rank r (the
median of the NLS space, default 24) and its maximum r_max (32):
  qa-float       LoRA of rank r, masked and quantization-aware (QA-SparsePEFT), merged onto the grid
  qa-float-nls   the same as an NLS super-adapter over the space (r_max trains), median sub-adapter merged
  adalora        AdaLoRA from rank r_max to an average rank r (the allocation prunes to r's budget)
  paca           PaCA with r(in+out)/out input columns per module: r's parameter count, trained in place
Any sqft.py option may be given; later options win (e.g. --methods qa-float,paca --nls off).
Training step time and memory of the same methods side by side: bench/adapter_step.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqft  # noqa: E402

DEFAULTS = ["--methods", "qa-float,adalora,paca", "--nls", "both"]


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    return sqft.main(DEFAULTS + list(argv))


if __name__ == "__main__":
    sys.exit(main())
