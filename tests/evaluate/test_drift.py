import json

import pytest

from slimtune.evaluate.drift import DRIFT_WARN, drift, tuning_base
from slimtune.report import _add_drift, format_models


def test_drift_ratio_and_warning_threshold():
    calm = drift(30.0, 25.0)
    assert calm == {"perplexity_base": 25.0, "perplexity_ratio": pytest.approx(1.2)}
    wrecked = drift(8249.0, 395.0)
    assert wrecked["perplexity_ratio"] == pytest.approx(20.88, rel=1e-3)
    assert "grew 20.88x over the base's (395.00 -> 8249.00)" in wrecked["drift_warning"]
    assert f"past the {DRIFT_WARN}x warning threshold" in wrecked["drift_warning"]


def _artifact(path, stage, model=None):
    path.mkdir()
    (path / "slimtune.json").write_text(json.dumps({"stage": stage, "config": {"model": model}}))
    return path


def test_tuning_base_of_a_merge_and_of_anything_else(tmp_path):
    base = _artifact(tmp_path / "base", "quantize")
    merged = _artifact(tmp_path / "merged", "merge", str(base))
    assert tuning_base(merged) == str(base)
    assert tuning_base(base) is None and tuning_base(tmp_path / "nothing") is None
    assert tuning_base(_artifact(tmp_path / "m2", "merge", "smollm2-135m")) == "smollm2-135m"
    assert tuning_base(_artifact(tmp_path / "m3", "merge", str(tmp_path / "gone"))) is None


def test_report_shows_the_ratio_and_warns(tmp_path):
    base = _artifact(tmp_path / "base", "quantize")
    _artifact(tmp_path / "merged", "merge", str(base))
    models = {"base": {"perplexity": 20.0}, "merged": {"perplexity": 50.0}}
    warnings = _add_drift(models, {"base": base, "merged": tmp_path / "merged"})
    assert models["merged"]["perplexity_vs"] == {"model": "base", "ratio": 2.5}
    assert [name for name, _ in warnings] == ["merged"] and "grew 2.50x" in warnings[0][1]
    row = {"accuracy": 0.5, "perplexity": 50.0, "sparsity": 0.5, "bits": 4, "size_mb": 1.0,
           "perplexity_vs": models["merged"]["perplexity_vs"]}
    assert "| 50.00 | 2.50x base |" in format_models({"merged": row})
