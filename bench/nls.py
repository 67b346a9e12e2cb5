"""Training-step time and peak memory of NLS (elastic LoRA) and QA-SparsePEFT against PEFT's LoRA and
slimtune's LoRA at the same maximal rank, in one run (issue goals: NLS <= 1.02x slimtune's LoRA and
<= 1.0x PEFT in time, <= 1.0x PEFT in memory; QA-SparsePEFT <= 1.3x PEFT in time).

    python bench/nls.py                 # default model, r=32 (NLS over 32,24,16), 4x256 tokens, fp32, 2 threads
    python bench/nls.py --rounds 2      # repeat, rotating the order of the variants
    python bench/nls.py --quick         # tiny random Llama, seconds

All options of bench/lora_step.py apply (this script is lora_step.py with the adapter variants
preselected; its docstring says how time and memory are measured).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_step  # noqa: E402

VARIANTS = "floor,peft,slimtune,nls,sparsepeft,qa-sparsepeft,qa-sparsepeft+nls"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a.startswith("--variants") for a in argv):
        argv += ["--variants", VARIANTS]
    if not any(a.startswith("--dropout") for a in argv):
        argv += ["--dropout", "0.1", "0.0"]
    sys.exit(lora_step.main(argv))
