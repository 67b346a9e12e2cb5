"""Measured CPU latency as a search objective (nas/latency.py): accepted by the API, the CLI and recipes,
recorded per trial and on the Pareto front, measured on the extracted, merged sub-network. No assertion on
a timing: only that each is a positive, finite number of milliseconds."""

import json
import math

import pytest
import torch

from slimtune import api
from slimtune.cli import main
from slimtune.configs import SearchConfig
from slimtune.errors import ConfigError
from slimtune.nas import ElasticSpace
from slimtune.nas.latency import latency_objective, sub_network

TRAIN = dict(max_steps=2, batch_size=4, learning_rate=2e-2, warmup_steps=0, save_steps=50, max_length=64, seed=3,
             progress=False)
FAST = dict(latency_seq_len=16, latency_decode_tokens=2, latency_repeats=1)


@pytest.fixture(scope="module")
def supernet(tiny_llama_dir, tmp_path_factory):
    return api.finetune(tiny_llama_dir, task="polarity", out=tmp_path_factory.mktemp("lat") / "super", adapter="nls",
                        rank_space=[4, 2], widths=["mlp", "heads"], dropout=0.0, **TRAIN)


def _records(out):
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_search_records_latency_per_trial_and_on_the_front(supernet, tmp_path):
    objectives = ["accuracy", "total_params", "latency_prefill", "latency_decode"]
    out = api.search(supernet, out=tmp_path / "search", objectives=objectives, trials=3, limit=2, population=2,
                     progress=False, **FAST)
    records = _records(out)
    assert len(records) == 3
    for r in records:
        assert list(r["objectives"]) == objectives
        assert _positive(r["objectives"]["latency_prefill"]) and _positive(r["objectives"]["latency_decode"])
    front = json.loads((out / "pareto.json").read_text())
    assert front["objectives"] == objectives and all("latency_prefill" in r["objectives"] for r in front["front"])
    settings = json.loads((out / "search_config.json").read_text())
    assert settings["latency"] == {"seq_len": 16, "decode_tokens": 2, "repeats": 1, "threads": None}
    with pytest.raises(ConfigError, match="other settings"):  # resuming needs the same measurement
        api.search(supernet, out=out, objectives=objectives, trials=3, limit=2, population=2, progress=False,
                   **{**FAST, "latency_seq_len": 32})
    assert api.extract(out=tmp_path / "sub", from_search=out, pick="smallest").is_dir()  # a latency is a cost


def test_cli_takes_latency_objectives_and_prints_the_front(supernet, tmp_path, capsys):
    assert main(["search", "--super-adapter", str(supernet), "--out", str(tmp_path / "s"), "--objectives",
                 "macs,latency_prefill", "--trials", "2", "--population", "2", "--latency-seq-len", "8",
                 "--latency-repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "latency_prefill" in printed and "  trial " in printed  # the front (which trials: timing decides)
    assert all(_positive(r["objectives"]["latency_prefill"]) for r in _records(tmp_path / "s"))


def test_latency_is_timed_on_the_physically_smaller_merged_sub_network(tiny_llama_dir, supernet):
    net, _ = api.load_adapted(tiny_llama_dir, supernet)
    net.eval()
    space = ElasticSpace.load(supernet)
    config = space.minimal()
    space.apply(net, config)
    sub = sub_network(net, space, config)
    ids = torch.tensor([[1, 17, 240, 31, 77, 5]])
    with torch.no_grad():
        torch.testing.assert_close(sub(input_ids=ids).logits, net(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert not any("lora" in n for n, _ in sub.named_parameters())  # adapters merged
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in net.parameters())
    assert space.module_axes(config)  # the super-network keeps its full weights and its active configuration
    assert net.model.layers[0].mlp.down_proj.in_features == 128
    values = latency_objective(net, space, ["latency_prefill"], seq_len=8, repeats=1)(config)
    assert list(values) == ["latency_prefill"] and _positive(values["latency_prefill"])


def test_latency_options_are_checked(supernet, tmp_path):
    assert SearchConfig.build(None, {"objectives": ["accuracy", "latency_decode"]}).latency_seq_len == 128
    with pytest.raises(ConfigError, match="latency_repeats set the latency objectives' measurement"):
        SearchConfig.build(None, {"objectives": ["accuracy", "macs"], "latency_repeats": 5})
    with pytest.raises(ConfigError, match="latency_seq_len: Input should be greater than or equal to 1"):
        SearchConfig.build(None, {"objectives": ["latency_prefill"], "latency_seq_len": 0})
    with pytest.raises(ConfigError, match="'latency_prefill' or 'latency_decode' .got 'latency'"):
        api.search(supernet, out=tmp_path / "x", objectives=["latency"])
    assert not (tmp_path / "x").exists()
