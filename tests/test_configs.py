"""One config per stage (configs.py): the API, the generated CLI and recipes read the same fields and
defaults, method options come from the registries, and a recipe fails on any typo before work."""

import json

import pytest

from slimtune import compress
from slimtune.cli import build_parser
from slimtune.cli_args import config_from_args
from slimtune.configs import CONFIG_VERSION, STAGE_CONFIGS, QuantizeConfig, SparsifyConfig
from slimtune.errors import ConfigError
from slimtune.quant.params import DEFAULT_GROUP_SIZE
from slimtune.recipe import load_recipe
from slimtune.sparsity import SPARSIFIERS


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def test_every_config_field_is_a_cli_flag():
    """Each field (nested calibration / training fields included) has a flag and a help text."""
    for stage in ("sparsify", "quantize", "finetune", "extract", "search", "evaluate", "compare", "export"):
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[stage]
        dests = {a.dest for a in sub._actions}
        for name, field in STAGE_CONFIGS[stage].model_fields.items():
            if (field.json_schema_extra or {}).get("cli") is False:
                continue
            assert name in dests or any(d.startswith(name + ".") for d in dests), (stage, name)
        assert all(a.help for a in sub._actions if a.option_strings), stage


def test_cli_gives_the_config_only_what_was_typed():
    args = _parse("quantize", "--out", "x", "--asym", "--group-size", "32", "--no-act-order", "--samples", "4")
    data = config_from_args(QuantizeConfig, args)
    assert data == {"symmetric": False, "group_size": 32, "options": {"act_order": False},
                    "calibration": {"n_samples": 4}}
    cfg = QuantizeConfig.build(data)
    assert cfg.bits == 4 and cfg.calibration.seq_len == 512 and cfg.options == {"act_order": False}
    assert config_from_args(QuantizeConfig, _parse("quantize", "--out", "x")) == {}
    assert QuantizeConfig().group_size == DEFAULT_GROUP_SIZE
    finetune = config_from_args(STAGE_CONFIGS["finetune"], _parse("finetune", "--out", "x", "--lr", "1e-3",
                                                                  "--rank-space", "8,4", "--adapter", "nls"))
    assert finetune == {"train": {"learning_rate": 1e-3}, "rank_space": [8, 4], "adapter": "nls"}


def test_a_new_method_option_reaches_the_cli_without_code(monkeypatch):
    method = compress.Method("toy", None, lambda weights, stats, sparsity, nm, stride=2: weights,
                             {"stride": (2, compress.number(1, 8, integer=True, help="every stride-th column"))})
    monkeypatch.setitem(SPARSIFIERS, "toy", method)
    assert "--stride" in _flags("sparsify")
    args = _parse("sparsify", "--out", "x", "--method", "toy", "--stride", "3")
    assert SparsifyConfig.build(config_from_args(SparsifyConfig, args)).options == {"stride": 3}
    with pytest.raises(ConfigError, match=r"option stride must be an integer in \[1, 8\], got 9"):
        SparsifyConfig.build({"method": "toy", "options": {"stride": 9}})


def test_gptq_knobs_are_its_options():
    assert QuantizeConfig(act_order=False, damp=0.02).options == {"act_order": False, "damp": 0.02}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) act_order for method 'rtn'; accepted: observer"):
        QuantizeConfig.build({"method": "rtn", "act_order": True})


@pytest.mark.parametrize("stage, message", [
    ({"name": "s", "stage": "sparsify", "calibration": {"samples": 4}}, r"stages\[0\]\.calibration\.samples: Extra"),
    ({"name": "f", "stage": "finetune", "train": {"epoch": 1}}, r"stages\[0\]\.train\.epoch: Extra"),
    ({"name": "q", "stage": "quantize", "options": {"dampening": 0.1}}, "unknown option.*dampening"),
    ({"name": "e", "stage": "evaluate", "batch_sise": 4}, r"stages\[0\]\.batch_sise: Extra"),
])
def test_a_recipe_typo_fails_before_any_stage(stage, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe({"stages": [stage]})


def test_recipes_reach_fields_they_could_not_before():
    recipe = load_recipe({"stages": [{"name": "q", "stage": "quantize"},
                                     {"name": "f", "stage": "finetune", "quant_aware": True, "float_base": "model"},
                                     {"name": "e", "stage": "evaluate", "batch_size": 2}]})
    assert recipe.stages[1].config(recipe).float_base == "model"
    evaluate = recipe.stages[2].config(recipe)
    assert evaluate.batch_size == 2 and evaluate.task == recipe.task and evaluate.perplexity_text == "wiki"


def test_the_manifest_records_the_config_with_its_version(tiny_llama_dir, tmp_path):
    from slimtune import api

    out = api.sparsify(tiny_llama_dir, out=tmp_path / "m", method="magnitude", sparsity=0.25, progress=False)
    config = json.loads((out / "slimtune.json").read_text())["config"]
    assert config["version"] == CONFIG_VERSION and config["method"] == "magnitude"
    assert SparsifyConfig.build({k: config[k] for k in SparsifyConfig.model_fields}).sparsity == 0.25
