import json

import pytest

from slimtune.demo import LABELS, demo_recipe, run_demo
from slimtune.recipe import load_recipe


def test_the_demo_recipe_is_the_full_sqft_pipeline():
    recipe = load_recipe(demo_recipe())
    assert [s.stage for s in recipe.stages] == ["sparsify", "quantize", "finetune", "extract", "merge", "evaluate"]
    tune = recipe.stages[2]
    assert tune.adapter == "nls" and tune.sparse_adapter and tune.quant_aware
    assert recipe.stages[1].bits == 4 and recipe.stages[3].select == "nncf"


@pytest.mark.slow
def test_demo_ends_sparse_int4_and_more_accurate(tmp_path):
    rows = run_demo(tmp_path / "demo")
    base, final = rows[LABELS["sparse-int4"]], rows[LABELS["final"]]
    assert final["sparsity"] >= 0.5 and final["bits"] == "4"
    assert final["accuracy"] >= base["accuracy"] + 0.08, rows
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"model", "sparse-int4", "final"}
    # re-running skips the finished stages and reproduces the table
    assert run_demo(tmp_path / "demo") == rows
