"""SVD re-factorization of an adapter: exact at full rank, optimal (Eckart–Young) when truncated, written as a
standard PEFT LoRA that PEFT and `slimtune merge` load; sparse adapters stay masked at merge; lineage kept."""

import json

import pytest
import torch

from slimtune import api
from slimtune.adapters import lora_layers
from slimtune.adapters.svd import allocate, factorize, read_factors, refactor_factors, truncate
from slimtune.errors import ConfigError
from slimtune.models import load_model

TRAIN = dict(max_steps=3, batch_size=4, learning_rate=5e-2, warmup_steps=0, max_length=64, seed=1, progress=False)


def _factors(out=24, inn=16, r=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)


@pytest.mark.parametrize("shape", [(24, 16, 6), (8, 30, 12), (16, 16, 16)])  # r > out, r == out == in too
def test_factorization_is_exact_ordered_and_orthonormal(shape):
    out, inn, r = shape
    a, b = _factors(out, inn, r)
    u, s, v = factorize(a, b, 0.75)
    delta = 0.75 * b.double() @ a.double()
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, delta, rtol=0, atol=1e-10)
    assert torch.all(s[:-1] >= s[1:])
    torch.testing.assert_close(s, torch.linalg.svdvals(delta)[:s.numel()], rtol=0, atol=1e-10)
    m = s.numel()
    torch.testing.assert_close(u.T @ u, torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(v.T @ v, torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 2, 4, 6])
def test_truncation_is_the_best_rank_r_approximation(rank):
    a, b = _factors()
    scaling = 2.0
    u, s, v = factorize(a, b, scaling)
    a2, b2 = truncate(u, s, v, rank, scaling, dtype=torch.float64)
    assert a2.shape == (rank, 16) and b2.shape == (24, rank)
    delta = scaling * b.double() @ a.double()
    error = float((scaling * b2 @ a2 - delta).norm())
    assert error == pytest.approx(float(s[rank:].pow(2).sum().sqrt()), abs=1e-9)  # Eckart–Young
    torch.testing.assert_close(a2 @ a2.T, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-10)  # A' = V_rᵀ


def test_budget_allocation_keeps_the_most_energy_per_parameter_within_the_budget():
    spectra = {"big": (torch.tensor([10.0, 9.0, 1.0]), 10), "small": (torch.tensor([3.0, 2.9, 2.8]), 10),
               "wide": (torch.tensor([9.5, 0.1]), 100)}
    ranks = allocate(spectra, budget=135)  # rank 1 everywhere: 120, then room for one component of cost 10
    assert ranks == {"big": 2, "small": 1, "wide": 1}
    assert allocate(spectra, budget=140) == {"big": 2, "small": 2, "wide": 1}  # 9² > 2.9² > 1² per 10
    assert allocate(spectra, budget=10_000) == {"big": 3, "small": 3, "wide": 2}  # capped at each module's rank
    with pytest.raises(ConfigError, match="below rank 1"):
        allocate(spectra, budget=100)


def test_bad_sizes_are_refused_before_reading(tmp_path):
    for kwargs, message in [({}, "neither"), ({"rank": 2, "budget": 10}, "both"), ({"rank": 0}, "positive"),
                            ({"budget": -5}, "positive"), ({"rank": {"m": 0}}, "positive")]:
        with pytest.raises(ConfigError, match=message):
            api.refactor(tmp_path / "missing", out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    return api.finetune(tiny_llama_dir, task="polarity", out=tmp_path_factory.mktemp("svd") / "ad", rank=4,
                        alpha=8, dropout=0.0, **TRAIN)


def _logits(net, tok, text="the market fell sharply on monday"):
    with torch.no_grad():
        return net(tok(text, return_tensors="pt")["input_ids"]).logits


def _deltas(model, adapter):
    net, _ = api.load_adapted(model, adapter)
    return {n: l.delta_weight().detach() for n, l in lora_layers(net).items()}


def test_full_rank_refactor_reproduces_the_adapter_and_loads_in_peft(tiny_llama_dir, trained, tmp_path):
    from peft import PeftModel

    full = api.refactor(trained, out=tmp_path / "full", rank=4)
    before, after = _deltas(tiny_llama_dir, trained), _deltas(tiny_llama_dir, full)
    assert set(before) == set(after)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-5)
    net, tok = api.load_adapted(tiny_llama_dir, trained)
    base, _ = load_model(tiny_llama_dir)
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(base, str(full)), tok), _logits(net, tok),
                               rtol=1e-4, atol=1e-4)
    manifest = json.loads((full / "slimtune.json").read_text())
    assert manifest["stage"] == "refactor" and manifest["config"]["model"] == str(tiny_llama_dir)
    assert manifest["lineage"] == json.loads((trained / "slimtune.json").read_text())["lineage"]  # inherited
    from slimtune.lineage import LeakageError

    with pytest.raises(LeakageError):  # so evaluate still refuses the examples the adapter trained on
        api.evaluate(tiny_llama_dir, task="polarity", adapter=full, split="train", limit=4, progress=False)


def test_truncated_refactor_is_optimal_per_module_and_merges(tiny_llama_dir, trained, tmp_path):
    from peft import PeftModel

    _, factors = read_factors(trained)
    low = api.refactor(trained, out=tmp_path / "low", rank={"model.layers.0.self_attn.q_proj": 1}, model=tiny_llama_dir)
    config = json.loads((low / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 1}
    name = "model.layers.0.self_attn.q_proj"
    a, b, scaling = factors[name]
    s = factorize(a, b, scaling)[1]
    delta = _deltas(tiny_llama_dir, low)[name].double()
    error = float((delta - scaling * b.double() @ a.double()).norm())
    assert error == pytest.approx(float(s[1:].pow(2).sum().sqrt()), rel=1e-4, abs=1e-6)
    metrics = json.loads((low / "slimtune.json").read_text())["metrics"]
    assert metrics["modules"][name]["frobenius_error"] == pytest.approx(error, rel=1e-4, abs=1e-6)
    merged = api.merge(low, out=tmp_path / "merged")
    net, tok = api.load_adapted(tiny_llama_dir, low)
    torch.testing.assert_close(_logits(load_model(merged)[0], tok), _logits(net, tok), rtol=1e-5, atol=1e-5)
    base, _ = load_model(tiny_llama_dir)
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(base, str(low)), tok), _logits(net, tok),
                               rtol=1e-4, atol=1e-4)
    # a budget: the parameters stay within it
    budget = api.refactor(trained, out=tmp_path / "budget", budget=5000)  # rank 1 everywhere: 2048, rank 4: 8192
    params = json.loads((budget / "slimtune.json").read_text())["metrics"]["adapter_parameters"]
    assert 5000 - 192 < params <= 5000  # full up to the widest module's one component (64 + 128)


def test_refactor_from_the_cli(trained, tmp_path, capsys):
    from slimtune.cli import main

    assert main(["refactor", "--adapter", str(trained), "--out", str(tmp_path / "r2"), "--rank", "2"]) == 0
    assert "written to" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == pytest.approx(4.0)  # scaling 8/4 kept: alpha' = 2 * 2
    assert main(["refactor", "--adapter", str(trained), "--out", str(tmp_path / "r0"), "--rank", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_a_sparse_nls_super_adapter_refactors_in_its_mode_and_keeps_the_zeros(tiny_llama_dir, tmp_path):
    sparse = api.sparsify(tiny_llama_dir, out=tmp_path / "sparse", method="magnitude", sparsity=0.5, progress=False)
    sup = api.finetune(sparse, task="polarity", out=tmp_path / "sup", adapter="nls", rank_space=[4, 2],
                       sparse_adapter=True, targets=["q_proj", "down_proj"], **TRAIN)
    full = api.refactor(sup, out=tmp_path / "full", rank=4)  # the super-adapter at its maximal rank
    cfg = json.loads((full / "adapter_config.json").read_text())
    assert cfg["slimtune"]["kind"] == "SPARSEPEFT" and not (full / "elastic_config.json").exists()
    before, after = _deltas(sparse, sup), _deltas(sparse, full)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-5)
    two = api.refactor(sup, out=tmp_path / "two", rank=2)
    merged = api.merge(two, out=tmp_path / "merged")
    base_net, merged_net = load_model(sparse)[0], load_model(merged)[0]
    for name in before:
        w0, w1 = base_net.get_submodule(name).weight, merged_net.get_submodule(name).weight
        assert torch.equal(w1 == 0, w0 == 0), name  # every zero of the base kept
        assert not torch.equal(w1, w0)
    # refactored factors at rank 2 hold the top-2 components of each (unmasked) update
    _, new = read_factors(two)
    _, old = read_factors(sup)
    for name, (a, b, s) in new.items():
        u, sig, v = factorize(*old[name])
        assert a.shape[0] == 2 and s == pytest.approx(old[name][2])
        torch.testing.assert_close((s * b.double() @ a.double()), u[:, :2] @ torch.diag(sig[:2]) @ v[:, :2].T,
                                   rtol=0, atol=1e-5)
    assert refactor_factors(old, rank=1)[2][name]["rank"] == 1
