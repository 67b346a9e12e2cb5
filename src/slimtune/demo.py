"""The main job on the embedded defaults: the full SQFT pipeline, as a recipe.

sparsify 50% (Wanda) -> quantize INT4 (GPTQ, g64 asym) -> QA-SparsePEFT + NLS fine-tuning ->
sub-adapter selection (NNCF's candidates on validation examples) -> merge onto the INT4 grid ->
export for deployment (the same INT4 codes, the pruned ones behind a bitmask, the tied embedding / LM head
quantized INT4: slimtune's compact format, under 40% of the merged model's size) -> evaluation
of the dense base, the sparse-INT4 base, the final model and its deployed form on the task's held-out test
split (965 QuaRTz questions: one question is 0.10 points), with 95% bootstrap intervals and the
paired differences between the models. Each stage writes its artifact under the run directory;
re-running skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

from .data import load_task
from .recipe import load_recipe, run_recipe

CALIBRATION = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0}
# Qualitative-relationship science questions (QuaRTz, from OpenAI's evals registry data), 2 choices; a test
# split of 965 held-out questions. (It was bigbench:social_iqa until the registry stopped serving BIG-bench.)
TASK = "evals:quartz"
# Settings chosen for SmolLM2-135M: the whole demo within 15 minutes on a 2-core CPU. The training
# seed (42) is not the split seed (the task's own, 0): no test question is ever trained on.
TRAIN = {"max_steps": 80, "learning_rate": 5e-4, "batch_size": 8, "max_length": 64, "warmup_steps": 5,
         "save_steps": 25, "seed": 42}
SELECT_ON = 100  # validation questions that score the sub-adapter candidates


def demo_recipe(model: str = "smollm2-135m", task: str = TASK, epochs: float | None = None,
                max_windows: int = 4) -> dict:
    train = {**TRAIN, **({"epochs": epochs, "max_steps": -1} if epochs else {})}
    return {"model": model, "task": task, "split_seed": 0, "stages": [
        {"name": "sparse", "stage": "sparsify", "method": "wanda", "sparsity": 0.5, "calibration": CALIBRATION},
        {"name": "sparse-int4", "stage": "quantize", "method": "gptq", "bits": 4, "group_size": 64,
         "symmetric": False, "calibration": CALIBRATION},
        {"name": "super-adapter", "stage": "finetune", "adapter": "nls", "rank_space": [32, 24, 16], "alpha": 64,
         "sparse_adapter": True, "quant_aware": True, "train": train},
        {"name": "sub-adapter", "stage": "extract", "select": "nncf", "limit": SELECT_ON},
        {"name": "final", "stage": "merge"},
        {"name": "deployed", "stage": "export", "format": "compact", "embeddings": "int4"},
        {"name": "eval", "stage": "evaluate", "models": ["model", "sparse-int4", "final", "deployed"],
         "max_windows": max_windows},
    ]}


LABELS = {"model": "dense base", "sparse-int4": "sparse-INT4 base (Wanda 50% + GPTQ)",
          "final": "final: QA-SparsePEFT + NLS, merged", "deployed": "final, deployed (compact, INT4 embedding)"}


def run_demo(out: str | Path = "slimtune-demo", *, model: str = "smollm2-135m", task: str = TASK,
             epochs: float | None = None, max_windows: int = 4) -> dict:
    """Run the demo recipe into `out`; print and return the final table's rows (name -> metrics)."""
    import json

    from .report import format_comparisons, format_models

    started = time.time()
    out = Path(out)
    sizes = load_task(task).sizes()
    print(f"slimtune demo: model {model}, task {task} ({sizes['train']} train / {sizes['validation']} validation / "
          f"{sizes['test']} test); artifacts in {out}/")
    recipe = load_recipe(demo_recipe(model, task, epochs, max_windows))
    run_recipe(recipe, out)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {LABELS.get(k, k): v for k, v in metrics["models"].items()}
    for row in rows.values():
        if row.get("perplexity_vs"):
            row["perplexity_vs"]["model"] = LABELS.get(row["perplexity_vs"]["model"], row["perplexity_vs"]["model"])
    n = next(iter(rows.values()))["n"]
    print(f"\nTask {task}: accuracy on its {n} held-out test examples (95% bootstrap interval); perplexity on "
          f"{max_windows} x 512 tokens of Wikipedia text; sparsity and bits of the decoder's linear layers\n")
    print(format_models(rows))
    print("\nPaired differences on the same test examples (a difference whose interval holds 0 is not a result):\n")
    print(format_comparisons(metrics["comparisons"], LABELS))
    print(f"\nreport: {out}/report.md; {time.time() - started:.0f} s")
    return rows
