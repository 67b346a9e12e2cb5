import json

import pytest

from slimtune.cli import build_parser, main


@pytest.mark.parametrize("command,options", [
    ("evaluate", ["--model", "--adapter", "--task", "--split", "--limit", "--perplexity-text", "--seq-len", "--max-windows", "--batch-size", "--out"]),
    ("finetune", ["--model", "--task", "--out", "--targets", "--adapter", "--rank", "--rank-space", "--groups", "--alpha",
                  "--dropout", "--sparse-adapter", "--quant-aware", "--qa-weights", "--float-base", "--epochs", "--lr",
                  "--batch-size", "--grad-accum", "--max-length", "--seed", "--overwrite"]),
    ("extract", ["--adapter", "--out", "--select", "--model", "--task", "--limit", "--overwrite"]),
    ("merge", ["--adapter", "--out", "--model", "--overwrite"]),
    ("demo", ["--out", "--model", "--task"]),
])
def test_help_explains_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in options:
        assert opt in text
    # every option has a help text
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert all(a.help for a in sub._actions)


def test_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["evaluate", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimtune evaluate: error: model") and "not found" in err and "Traceback" not in err


def test_finetune_merge_evaluate_from_the_cli(tiny_llama_dir, tmp_path, capsys):
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["finetune", "--model", str(tiny_llama_dir), "--out", str(adapter), "--rank", "2",
                 "--max-steps", "2", "--batch-size", "4", "--targets", "q_proj,v_proj"]) == 0
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == ["q_proj", "v_proj"]
    assert main(["merge", "--adapter", str(adapter), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(merged), "--limit", "6", "--out", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["n"] == 6 and 0 <= printed["acc"] <= 1
    sizes = printed["split_sizes"]
    assert (f"scored 6 test examples of polarity (split seed 0; splits: train {sizes['train']}, "
            f"validation {sizes['validation']}, test {sizes['test']})") in captured.err
    assert json.loads((tmp_path / "r.json").read_text())["acc"] == printed["acc"]


def test_nls_finetune_and_extract_from_the_cli(tiny_llama_dir, tmp_path, capsys):
    sup, sub = tmp_path / "super", tmp_path / "sub"
    assert main(["finetune", "--model", str(tiny_llama_dir), "--out", str(sup), "--adapter", "nls", "--rank-space",
                 "4,3,2", "--groups", "block", "--max-steps", "2", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(sup)]) == 0
    assert "elastic super-adapter: 2 rank groups (block), rank spaces [(4, 3, 2)]" in capsys.readouterr().out
    assert main(["extract", "--adapter", str(sup), "--out", str(sub), "--select", '{"model.layers.1": 2}']) == 0
    assert "sub-adapter (explicit) written" in capsys.readouterr().out
    ranks = json.loads((sub / "adapter_config.json").read_text())["rank_pattern"]
    assert set(ranks.values()) == {2} and all(k.startswith("model.layers.1.") for k in ranks) and len(ranks) == 7
    assert main(["finetune", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "x"), "--sparse-adapter"]) == 2
    err = capsys.readouterr().err
    assert "needs a sparse base" in err and "drop --sparse-adapter" in err
    assert main(["finetune", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "x"), "--adapter", "nls",
                 "--rank-space", "4,8"]) == 2
    assert "strictly descending" in capsys.readouterr().err
