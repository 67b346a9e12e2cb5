import json

import pytest

from slimtune.demo import LABELS, demo_recipe, run_demo
from slimtune.recipe import load_recipe


def test_the_demo_recipe_is_the_full_sqft_pipeline():
    recipe = load_recipe(demo_recipe())
    assert [s.stage for s in recipe.stages] == ["sparsify", "quantize", "finetune", "extract", "merge", "export",
                                                    "evaluate"]
    tune = recipe.stages[2]
    assert tune.adapter == "nls" and tune.sparse_adapter and tune.quant_aware
    assert recipe.stages[1].bits == 4 and recipe.stages[3].select == "nncf"
    assert recipe.stages[5].format == "compact" and recipe.stages[5].embeddings == "int4"
    # the split belongs to the task (seed 0), not to the training seed; selection on validation only
    assert recipe.split_seed == 0 and tune.train.seed != recipe.split_seed and recipe.stages[3].limit
    assert recipe.stages[-1].split == "test"


def test_the_demo_task_has_a_test_split_worth_reporting():
    from slimtune.data import load_task
    from slimtune.demo import TASK

    assert len(load_task(TASK).test) >= 300  # one example is at most 0.33 points


@pytest.mark.slow
def test_demo_ends_sparse_int4_held_out_with_intervals(tmp_path):
    rows = run_demo(tmp_path / "demo")
    final = rows[LABELS["final"]]
    assert final["sparsity"] >= 0.5 and final["bits"] == "4"
    for row in rows.values():  # every accuracy on the same held-out test split, with its interval
        lo, hi = row["accuracy_ci"]
        assert row["n"] >= 300 and row["split_seed"] == 0 and lo <= row["accuracy"] <= hi
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"model", "sparse-int4", "final", "deployed"}
    assert {(c["a"], c["b"]) for c in metrics["comparisons"]} >= {("sparse-int4", "model"), ("final", "model"),
                                                                  ("final", "sparse-int4"), ("deployed", "final")}
    deployed = rows[LABELS["deployed"]]  # the same INT4 codes behind a bitmask, an INT4 embedding
    assert deployed["bits"] == "4" and deployed["sparsity"] == final["sparsity"]
    assert deployed["size_mb"] <= 0.4 * final["size_mb"]
    # re-running skips the finished stages and reproduces the table
    assert run_demo(tmp_path / "demo") == rows
