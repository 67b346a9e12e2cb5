"""Intruder dimensions: the definition on matrices whose answer is known exactly, then a tiny model
end to end (a LoRA finetuned for a few steps, diagnosed through the API and the CLI, as an adapter and
as a merged model)."""

import json
import math

import pytest
import torch

from slimtune import api
from slimtune.diagnose import format_intruders
from slimtune.diagnose.intruders import intruder_dimensions
from slimtune.errors import ConfigError

OUT, IN = 20, 12


def _base(seed=0):
    """W = U·diag(s)·Vᵀ, out 20 × in 12, distinct singular values 10..1; returns (W, Q (20×20), s, V)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(OUT, OUT, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(IN, IN, generator=g, dtype=torch.float64))
    s = torch.linspace(10.0, 1.0, IN, dtype=torch.float64)
    return q[:, :IN] @ torch.diag(s) @ v.T, q, s, v


def _tuned(sigma_over_s, j=3):
    """W + σ·u·v_jᵀ with u orthogonal to every left singular vector of W (u = Q[:, 15]).

    Then W' = Σ_{i≠j} s_i·u_i·v_iᵀ + (s_j·u_j + σ·u)·v_jᵀ, so W' has one new left singular vector,
    (s_j·u_j + σ·u)/sqrt(s_j² + σ²), whose largest |cosine| with the base is exactly s_j / sqrt(s_j² + σ²);
    every other one is a base vector (cosine 1)."""
    w, q, s, v = _base()
    sigma = sigma_over_s * s[j]
    return w, w + sigma * torch.outer(q[:, 15], v[:, j]), 1.0 / math.sqrt(1.0 + sigma_over_s ** 2)


@pytest.mark.parametrize("ratio", [2.0, 1.0, 0.5])
def test_a_rank_one_update_outside_the_base_is_one_intruder_exactly_below_its_similarity(ratio):
    w, tuned, sim = _tuned(ratio)
    just_above, just_below = sim + 1e-6, sim - 1e-6
    r = intruder_dimensions(w, tuned, k=10, epsilon=just_above)
    assert r["intruders"] == 1 and len(r["max_sim"]) == 10
    assert min(r["max_sim"]) == pytest.approx(sim, abs=1e-6)
    assert sorted(r["max_sim"])[1:] == pytest.approx([1.0] * 9, abs=1e-9)
    assert intruder_dimensions(w, tuned, k=10, epsilon=just_below)["intruders"] == 0


def test_the_intruder_sits_at_the_rank_of_its_singular_value():
    w, tuned, sim = _tuned(2.0, j=3)  # singular value sqrt(s_3² + σ²) = s_3·sqrt(5) ≈ 16.3: the largest
    r = intruder_dimensions(w, tuned, k=10, epsilon=0.5)
    assert r["intruder_index"] == [0] and r["intruders"] == 1
    assert r["sigma"][0] == pytest.approx(float(_base()[2][3]) * math.sqrt(5.0))
    assert intruder_dimensions(w, tuned, k=1, epsilon=0.5)["intruders"] == 1


def test_zero_update_has_no_intruders_and_k_is_capped_at_the_rank():
    w = _base()[0]
    r = intruder_dimensions(w, w.clone(), k=50)
    assert r["intruders"] == 0 and r["k"] == IN and r["max_sim"] == pytest.approx([1.0] * IN, abs=1e-9)
    assert r["relative_update"] == 0.0


def test_signs_of_the_matrices_and_of_the_update_do_not_matter():
    w, tuned, _ = _tuned(2.0)
    first = intruder_dimensions(w, tuned)
    for base, other in ((-w, -tuned), (w, -tuned), (-w, tuned), (w, 2 * w - tuned)):  # 2w - W' flips the update
        r = intruder_dimensions(base, other)
        assert r["intruders"] == first["intruders"]
        assert r["max_sim"] == pytest.approx(first["max_sim"], abs=1e-6)


def test_a_rotation_inside_the_base_is_no_intruder_and_a_random_one_is():
    w, q, s, v = _base()
    # swapping the order of two singular values keeps the singular vectors: no intruder
    s2 = s.clone()
    s2[0], s2[1] = s[1], s[0]
    assert intruder_dimensions(w, q[:, :IN] @ torch.diag(s2) @ v.T)["intruders"] == 0
    # a large update in a random direction outside the base is (almost surely) an intruder
    g = torch.Generator().manual_seed(5)
    u = q[:, IN:] @ torch.randn(OUT - IN, generator=g, dtype=torch.float64)
    big = w + 100.0 * torch.outer(u / u.norm(), torch.randn(IN, generator=g, dtype=torch.float64))
    assert intruder_dimensions(w, big)["intruder_index"] == [0]


@pytest.mark.parametrize("k, epsilon", [(0, 0.5), (-1, 0.5), (2.5, 0.5), (True, 0.5),
                                        (10, 0.0), (10, 1.0), (10, -0.1), (10, 1.5), (10, float("nan"))])
def test_bad_k_or_epsilon_is_refused(k, epsilon):
    w = _base()[0]
    with pytest.raises(ConfigError, match="k |epsilon"):
        intruder_dimensions(w, w, k=k, epsilon=epsilon)
    with pytest.raises(ConfigError, match="k |epsilon"):  # before any model is loaded
        api.diagnose_intruders("no-such-model", adapter="no-such-adapter", k=k, epsilon=epsilon)


def test_adapter_and_tuned_model_are_one_or_the_other():
    with pytest.raises(ConfigError, match="not both"):
        api.diagnose_intruders("m", adapter="a", tuned="t")
    with pytest.raises(ConfigError, match="not neither"):
        api.diagnose_intruders("m")
    with pytest.raises(ConfigError, match="--plot"):
        api.diagnose_intruders("m", adapter="a", plot="x.txt")


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("intruders") / "ad"
    return api.finetune(tiny_llama_dir, task="polarity", out=out, rank=4, alpha=8, dropout=0.0, max_steps=3,
                        batch_size=4, learning_rate=5e-2, warmup_steps=0, max_length=64, seed=1, progress=False)


def test_adapter_and_its_merged_model_give_the_same_diagnosis(tiny_llama_dir, trained, tmp_path):
    result = api.diagnose_intruders(adapter=trained, k=5, out=tmp_path / "r.json", plot=tmp_path / "r.png")
    assert result["model"] == str(tiny_llama_dir)  # the base the adapter records
    assert result["modules"] == 14 and all(r["k"] == 5 and len(r["max_sim"]) == 5 for r in result["layers"])
    assert result["total_intruders"] == sum(r["intruders"] for r in result["layers"])
    assert json.loads((tmp_path / "r.json").read_text())["total_intruders"] == result["total_intruders"]
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "intruders:" in format_intruders(result)

    merged = api.merge(trained, out=tmp_path / "merged")
    from_merged = api.diagnose_intruders(tuned=merged, k=5)  # base from the merge's manifest
    by_name = {r["module"]: r for r in from_merged["layers"]}
    assert set(by_name) == {r["module"] for r in result["layers"]}
    for r in result["layers"]:
        assert by_name[r["module"]]["max_sim"] == pytest.approx(r["max_sim"], abs=1e-4)
    # a re-run may replace its own result file, never another file
    api.diagnose_intruders(adapter=trained, k=5, out=tmp_path / "r.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a slimtune evaluation result"):
        api.diagnose_intruders(adapter=trained, out=tmp_path / "other.json")


def test_the_base_of_a_sparse_adapter_is_the_sparse_base(tiny_llama_dir, tmp_path, news_snippet):
    sparse = api.sparsify(tiny_llama_dir, out=tmp_path / "sparse", method="magnitude", sparsity=0.5, progress=False)
    ad = api.finetune(sparse, task="polarity", out=tmp_path / "ad", rank=4, alpha=8, sparse_adapter=True,
                      targets=["q_proj", "down_proj"], max_steps=2, batch_size=4, learning_rate=5e-2,
                      warmup_steps=0, max_length=64, seed=1, progress=False)
    result = api.diagnose_intruders(adapter=ad, targets=["down_proj"])
    assert [r["module"] for r in result["layers"]] == [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert result["method"] == "sparsepeft"
    merged = api.merge(ad, out=tmp_path / "merged")  # the masked update, as the diagnosis reads it
    from_merged = api.diagnose_intruders(sparse, tuned=merged, targets=["down_proj"])
    for a, b in zip(result["layers"], from_merged["layers"]):
        assert a["module"] == b["module"] and a["max_sim"] == pytest.approx(b["max_sim"], abs=1e-4)
        assert a["relative_update"] == pytest.approx(b["relative_update"], rel=1e-4)
    # against the dense model it was pruned from, the tuned weights differ by the pruning too
    dense = api.diagnose_intruders(tiny_llama_dir, tuned=merged, targets=["down_proj"])
    assert all(d["relative_update"] > a["relative_update"] for d, a in zip(dense["layers"], result["layers"]))


def test_diagnose_from_the_cli(trained, tmp_path, capsys):
    from slimtune.cli import main

    assert main(["diagnose", "intruders", "--adapter", str(trained), "--k", "3", "--epsilon", "0.6",
                 "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and "intruders:" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["k"] == 3 and result["epsilon"] == 0.6 and (tmp_path / "r.png").is_file()
    assert main(["diagnose", "intruders", "--adapter", str(trained), "--k", "0"]) == 2
    assert "k (how many top singular vectors" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --adapter and --tuned exclude each other
        main(["diagnose", "intruders", "--adapter", str(trained), "--tuned", str(trained)])


@pytest.mark.filterwarnings("ignore:the base is")
def test_a_quant_aware_adapter_is_diagnosed_on_the_grid_against_the_dequantized_base(tiny_llama_dir, tmp_path):
    from slimtune.adapters import lora_layers
    from slimtune.diagnose import adapter_pairs

    int4 = api.quantize(tiny_llama_dir, out=tmp_path / "int4", method="rtn", bits=4, group_size=16, progress=False)
    ad = api.finetune(int4, task="polarity", out=tmp_path / "ad", rank=4, alpha=8, quant_aware=True,
                      qa_weights="quantized", targets=["v_proj"], max_steps=2, batch_size=4, learning_rate=5e-2,
                      warmup_steps=0, max_length=64, seed=1, progress=False)
    net, _ = api.load_adapted(int4, ad)
    for name, w0, w1 in adapter_pairs(int4, ad):
        layer = lora_layers(net)[name]
        assert torch.equal(w0, layer.base_layer.weight)  # the dequantized INT4 base
        assert torch.equal(w1, layer.grid.fake_quantize(w1))  # the tuned weight lies on the base's grid
    merged = api.merge(ad, out=tmp_path / "merged")  # packed INT4 on the same grid
    a = api.diagnose_intruders(adapter=ad)
    b = api.diagnose_intruders(int4, tuned=merged)
    assert [r["module"] for r in a["layers"]] == [r["module"] for r in b["layers"]]
    for ra, rb in zip(a["layers"], b["layers"]):
        assert ra["max_sim"] == pytest.approx(rb["max_sim"], abs=1e-5)
