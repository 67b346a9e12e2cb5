"""AdaLoRA (adapters/adalora.py): budget schedule, allocation masks, PEFT as the reference, export
as a PEFT LoRA with rank_pattern, the sparse and INT4 merge paths, the finetune stage."""

import sys
from pathlib import Path

import pytest
import torch

from slimtune.adapters import adapter_layers, merge_adapters, save_adapter
from slimtune.adapters.adalora import AdaLoraLinear, AdaLoraOptions, RankAllocator
from slimtune.errors import ConfigError
from slimtune.quant import QuantLinear, compute_params

sys.path.insert(0, str(Path(__file__).parent))
from adalora_reference import run_both  # noqa: E402


def _layers(n=3, r=4, seed=0):
    torch.manual_seed(seed)
    return {f"m{i}": AdaLoraLinear(torch.nn.Linear(8, 6), r=r, alpha=4.0) for i in range(n)}


def test_budget_schedule_is_cubic_from_init_to_target():
    opts = AdaLoraOptions(init_r=4, target_r=2, tinit=2, tfinal=3, deltaT=2)
    alloc = RankAllocator(_layers(), opts, total_step=15)  # budget 12 -> 6 over steps 2..12
    assert (alloc.init_bgt, alloc.target_bgt) == (12, 6)
    got = {t: alloc.budget_schedule(t) for t in (0, 2, 3, 4, 7, 11, 12, 13, 14)}
    expect = lambda t: int(6 * (1 - (t - 2) / 10) ** 3 + 6)  # noqa: E731
    assert got[0] == got[2] == (12, False)
    assert got[3] == (expect(3), False) and got[4] == (expect(4), True) and got[7] == (expect(7), False)
    assert [expect(t) for t in (3, 4, 7, 11)] == [10, 9, 6, 6] and got[12] == (6, True)
    assert got[13] == got[14] == (6, True)
    with pytest.raises(ConfigError, match="steps to allocate"):
        RankAllocator(_layers(), AdaLoraOptions(tinit=10, tfinal=5), total_step=15)


def test_masks_after_allocation_keep_the_best_triplets_and_zero_the_rest():
    layers = _layers()
    alloc = RankAllocator(layers, AdaLoraOptions(init_r=4, target_r=2), total_step=10)
    scores = {n: torch.tensor([float(i * 4 + j) for j in range(4)]) for i, n in enumerate(layers)}
    alloc.scores = lambda: scores  # known importances: m2 > m1 > m0
    for layer in layers.values():
        torch.nn.init.normal_(layer.lora_E)
    x = torch.randn(5, 8)
    with torch.no_grad():
        kept_out = {n: l(x) for n, l in layers.items()}
    ranks = alloc.mask_to_budget(7)  # prune the 5 lowest scores
    assert ranks == {"m0": 0, "m1": 3, "m2": 4} and sum(ranks.values()) == 7
    for layer in layers.values():
        assert torch.all(layer.lora_E.view(-1)[~layer.kept] == 0)
        assert torch.all(layer.lora_E.view(-1)[layer.kept] != 0)
    with torch.no_grad():  # m2 kept everything: unchanged; m0 lost all: the base alone
        torch.testing.assert_close(layers["m2"](x), kept_out["m2"])
        torch.testing.assert_close(layers["m0"](x), layers["m0"].base_layer(x))
        exported = layers["m1"].export()
        assert exported.rank == 3 and exported.alpha == pytest.approx(layers["m1"].scaling * 3)
        b, a = exported.tensors["lora_B.weight"], exported.tensors["lora_A.weight"]
        torch.testing.assert_close(b @ a * (exported.alpha / exported.rank), layers["m1"].delta_weight())


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    from slimtune import lineage
    from slimtune.models import load_model

    net, tok = load_model(tiny_llama_dir)
    examples = lineage.task_split("polarity", 0).train[:48]
    opts = AdaLoraOptions(init_r=6, target_r=3, tinit=2, tfinal=3)
    return run_both(net, tok, examples, tmp_path_factory.mktemp("adalora"), opts, steps=12, lr=5e-2), tok


def test_ranks_and_losses_agree_with_peft(reference):
    """Same initial weights, data order and Trainer settings: PEFT's AdaLoraModel (its allocation called from
    a callback, as a user must write it) and ours. Losses differ only by float32 rounding (PEFT computes
    (x·(ΛQ)ᵀ)·Pᵀ·alpha/ranknum, we scale the rank-r activation first): |Δ| <= 1e-5; the kept triplets are equal."""
    out, _ = reference
    assert len(out["peft_losses"]) == len(out["our_losses"]) == 12
    torch.testing.assert_close(torch.tensor(out["our_losses"]), torch.tensor(out["peft_losses"]), rtol=0, atol=1e-5)
    assert out["our_ranks"] == out["peft_ranks"] and sum(out["our_ranks"].values()) == 3 * len(out["our_ranks"])
    for name, kept in out["peft_kept"].items():
        assert torch.equal(out["our_kept"][name], kept), name


def test_export_loads_in_peft_with_the_same_logits(reference, tiny_llama_dir, tmp_path):
    from peft import PeftModel

    from slimtune.adapters.peft_io import read_adapter_config
    from slimtune.models import load_model

    out, tok = reference
    ours = out["ours"]
    save_adapter(ours, tmp_path / "a", base_model_name_or_path=str(tiny_llama_dir))
    config = read_adapter_config(tmp_path / "a")
    ranks = {n: r for n, r in out["our_ranks"].items() if r > 0}
    assert {n: config["rank_pattern"].get(n, config["r"]) for n in ranks} == ranks
    base, _ = load_model(tiny_llama_dir)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    ids = tok(["a fine film with a weak ending"], return_tensors="pt")["input_ids"]
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=0, atol=1e-5)


def _sparse_layer(quant=False):
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 16)
    with torch.no_grad():
        base.weight.masked_fill_(torch.rand(16, 32) < 0.5, 0.0)
    if quant:
        params = compute_params(base.weight.detach(), 4, 8, False)
        base = QuantLinear.from_codes(params, params.quantize(base.weight.detach()), base.bias.detach())
    layer = AdaLoraLinear(base, r=4, alpha=8.0, sparse=True, quant_aware=quant)
    torch.nn.init.normal_(layer.lora_E, std=3.0)
    layer.kept[1] = False
    layer.apply_mask()
    return layer


def test_sparse_variant_keeps_zeros_at_merge_and_qa_lands_on_the_grid():
    layer = _sparse_layer()
    zeros = layer.base_layer.weight == 0
    x = torch.randn(3, 32, requires_grad=True)
    layer(x).sum().backward()  # the masked forward trains P, Λ, Q
    assert layer.lora_E.grad is not None and layer.lora_A.weight.grad.abs().sum() > 0
    with torch.no_grad():
        unmerged, effective = layer(x), layer.effective_weight().clone()
        merged = layer.merge()
        assert torch.all(merged.weight[zeros] == 0) and torch.equal(merged.weight, effective)
        torch.testing.assert_close(merged(x), unmerged, rtol=0, atol=1e-5)
    assert layer.export().variants == ("sparse",) and layer.peft_export() is None
    qa = _sparse_layer(quant=True)
    with torch.no_grad():
        effective, codes = qa.effective_weight().clone(), qa.merged_codes()
        merged = merge_adapters(torch.nn.Sequential(qa))[0]
    assert isinstance(merged, QuantLinear) and torch.equal(merged.codes(), codes)
    assert torch.equal(merged.dequantized_weight(), effective)


def test_finetune_adalora_runs_the_allocation_and_exports_the_ranks(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    from slimtune import api
    from slimtune.artifacts import Artifact
    from slimtune.models import load_model

    out = api.finetune(tiny_llama_dir, out=tmp_path / "ada", adapter="adalora", targets=["q_proj", "v_proj"],
                       adalora={"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}, max_steps=5, batch_size=4,
                       max_length=48, progress=False)
    art = Artifact.load(out)
    assert art.method == "adalora" and art.metrics["total_rank"] == 2 * 4
    assert art.metrics["budget_history"][-1][1] == 8  # the callback ran after every step
    base, _ = load_model(tiny_llama_dir)
    PeftModel.from_pretrained(base, str(out))
    with pytest.raises(ConfigError, match="adalora options"):
        api.finetune(tiny_llama_dir, out=tmp_path / "x", adapter="lora", adalora={"tinit": 4})
    assert adapter_layers(base) == {}
