"""Parameters and MACs per token (nas/cost.py) against hand counts, and `slimtune inspect` reporting them."""

import json

import pytest

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.nas import SearchSpace
from slimtune.nas.budgets import cost_model
from slimtune.nas.cost import attention_macs, linear_macs, model_costs
from slimtune.nas.importance import structure_dimensions
from slimtune.nas.widths import mlp_width_dimensions

# tiny llama: hidden 64, intermediate 128, 4 heads of 16 over 2 KV heads, 2 blocks, vocab 512, tied head
H, I, V, BLOCKS, KV = 64, 128, 512, 2, 32
BLOCK_LINEAR = H * H + H * KV + H * KV + H * H + 3 * H * I  # q, k, v, o, gate, up, down (no biases)
EMBED = V * H
NORMS = BLOCKS * 2 * H + H


def test_llama_costs_are_the_hand_counts(tiny_llama_dir):
    net, _ = load_model(tiny_llama_dir)
    c = model_costs(net, seq_len=128)
    assert c["block_linear_parameters"] == BLOCKS * BLOCK_LINEAR == 73728
    assert c["embedding_parameters"] == EMBED
    assert c["parameters"] == EMBED + BLOCKS * BLOCK_LINEAR + NORMS == 106816  # the tied head counted once
    assert c["linear_macs_per_token"] == BLOCKS * BLOCK_LINEAR + V * H  # the LM head is a matmul, the lookup is not
    assert c["attention_macs_per_token"] == BLOCKS * 2 * 128 * H  # QK^T and AV over 128 positions, 4 x 16 features
    assert c["macs_per_token"] == 106496 + 32768
    assert c["widths"] == {"intermediate": 128, "heads": 4, "kv_heads": 2} and "block_widths" not in c
    assert model_costs(net, seq_len=16)["attention_macs_per_token"] == BLOCKS * 2 * 16 * H
    with pytest.raises(ConfigError, match="seq_len"):
        model_costs(net, seq_len=0)


def test_sliced_widths_and_the_budget_cost_model_count_alike(tiny_llama_dir):
    net, _ = load_model(tiny_llama_dir)
    dims = mlp_width_dimensions(net, (1.0, 0.5))
    space = SearchSpace(dims)
    half = {d.name: 64 for d in dims}
    saved = linear_macs(net, space, half)
    assert saved == linear_macs(net) - BLOCKS * 3 * H * 64
    space.apply(net, half)  # the active widths are what a model without a space counts
    assert linear_macs(net) == saved
    assert model_costs(net)["block_linear_parameters"] == BLOCKS * (BLOCK_LINEAR - 3 * H * 64)
    space.apply(net, space.maximal())
    structure = structure_dimensions(net)  # EFTNAS' cost model: the same linear and attention terms
    assert cost_model(net, structure, "macs", seq_len=128).total == model_costs(net, 128)["macs_per_token"]
    assert attention_macs(H, 128) == 2 * 128 * H


def test_gemma3_sliding_layers_attend_within_their_window(tiny_gemma3_dir):
    net, _ = load_model(tiny_gemma3_dir)  # 4 blocks, 3 sliding over 8 positions, q: 4 heads x 16
    c = model_costs(net, seq_len=128)
    assert c["attention_macs_per_token"] == 3 * attention_macs(64, 8) + attention_macs(64, 128)


def test_inspect_reports_costs_and_measured_latency(tiny_llama_dir, tiny_bert_dir, capsys):
    summary = api.inspect(tiny_llama_dir, latency=True, prefill_tokens=16, decode_tokens=2, repeats=1)
    assert summary["costs"]["parameters"] == 106816 and summary["costs"]["macs_per_token"] == 139264
    t = summary["latency"]  # measured, never asserted as a timing
    assert t["prefill_tokens"] == 16 and t["prefill_ms"] > 0 and t["decode_tokens_per_s"] > 0
    encoder = api.inspect(tiny_bert_dir, latency=True, prefill_tokens=8, repeats=1)
    assert encoder["costs"]["widths"]["heads"] == 4 and "decode_tokens_per_s" not in encoder["latency"]
    assert "costs" not in api.inspect(tiny_llama_dir, costs=False)
    with pytest.raises(ConfigError, match="repeats"):
        api.inspect(tiny_llama_dir, latency=True, repeats=0)
    assert main(["inspect", str(tiny_llama_dir), "--seq-len", "16"]) == 0
    text = capsys.readouterr().out
    assert "parameters 106,816" in text and f"MACs per token {106496 + BLOCKS * 2 * 16 * H:,}" in text
    assert main(["inspect", str(tiny_llama_dir), "--json", "--latency", "--prefill-tokens", "8",
                 "--decode-tokens", "1", "--repeats", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latency"]["decode_tokens"] == 1


def test_inspect_refuses_latency_of_an_adapter(tiny_llama_dir, tmp_path, capsys):
    adapter = api.finetune(tiny_llama_dir, out=tmp_path / "ad", max_steps=1, batch_size=2, progress=False)
    assert "costs" not in api.inspect(adapter)
    with pytest.raises(ConfigError, match="is an adapter: merge it first"):
        api.inspect(adapter, latency=True)
    assert main(["inspect", str(adapter), "--latency"]) == 2
    assert "merge it first" in capsys.readouterr().err
