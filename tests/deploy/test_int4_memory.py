"""Kernel mode holds one packed copy of each INT4 weight (the kernel's): the codes re-derived from it
are exact, so saving, loading and the QA-SparsePEFT merge give the same codes as the exact path; the
token embedding / LM head can be held in half precision (tied weights stay tied)."""

import copy

import pytest
import torch

from slimtune.adapters import add_lora, merge_lora
from slimtune.deploy import int4
from slimtune.deploy.half import half_embeddings
from slimtune.quant import QuantLinear, compute_params, quantize_model
from slimtune.quant.linear import set_inference


def _layer(out=48, cols=256, group=64, symmetric=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out, cols)
    w[torch.rand(out, cols) < 0.5] = 0.0
    p = compute_params(w, 4, group, symmetric)
    return QuantLinear.from_codes(p, p.quantize(w), torch.randn(out)), w


@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (-1, False)])
def test_kernel_mode_drops_the_codes_and_gives_them_back_exactly(group, symmetric):
    ql, _ = _layer(group=group, symmetric=symmetric)
    codes, qweight, state = ql.codes().clone(), ql.qweight.clone(), copy.deepcopy(ql.state_dict())
    ql.inference = "kernel"
    with torch.no_grad():
        ql(torch.randn(2, 256))
    assert ql._buffers["qweight"] is None and "qweight" not in dict(ql.named_buffers())
    assert torch.equal(ql.codes(), codes)
    saved = ql.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert ql._buffers["qweight"] is None  # saving does not bring the codes back into memory
    fresh = QuantLinear(256, 48, 4, group, symmetric, bias=True)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.codes(), codes)
    assert torch.equal(ql.qweight, qweight)  # reading qweight restores it ...
    with torch.no_grad():
        ql(torch.randn(1, 256))
    assert ql._buffers["qweight"] is None  # ... and the next kernel forward drops it again
    set_inference(torch.nn.Sequential(ql), "dequantize")
    assert torch.equal(ql._buffers["qweight"], qweight) and ql._kernel is None


def test_unpack_codes_inverts_the_kernel_packing():
    torch.manual_seed(0)
    for n, k in ((16, 32), (48, 576), (96, 1536)):
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        w = int4.pack_weight(codes, torch.rand(n, k // 32) + 0.1, torch.randint(0, 16, (n, k // 32)), 32)
        assert torch.equal(int4.unpack_codes(w), codes)


def test_grid_edited_in_kernel_mode_repacks_from_the_same_codes():
    ql, _ = _layer()
    codes = ql.codes().clone()
    ql.inference = "kernel"
    x = torch.randn(3, 256)
    with torch.no_grad():
        ql(x)
        ql.scales.mul_(2.0)  # in place, while the codes live in the kernel's copy only
        got = ql(x)
        ql.inference = "dequantize"
        ref = ql(x)
    assert torch.equal(ql.codes(), codes)
    assert (got - ref).abs().max() <= 2e-2 * ref.abs().max()


@pytest.mark.parametrize("symmetric", [True, False])
def test_quant_aware_merge_in_kernel_mode_lands_on_the_same_codes(symmetric):
    def merged(kernel: bool):
        qbase, float_weight = _layer(group=32, symmetric=symmetric)
        model = torch.nn.Sequential(qbase)
        if kernel:
            set_inference(model, "kernel")
            assert qbase._buffers["qweight"] is None
        (layer,) = add_lora(model, ["0"], r=4, alpha=8, sparse=True, quant_aware=True).values()
        torch.manual_seed(1)
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
        torch.nn.init.normal_(layer.lora_A.weight, std=0.5)
        with torch.no_grad():
            merge_lora(model)
        return model

    exact, kernel = merged(False), merged(True)
    assert torch.equal(kernel[0].codes(), exact[0].codes())
    assert kernel[0].params.to_bytes() == exact[0].params.to_bytes()
    x = torch.randn(4, 256)
    with torch.no_grad():
        ref, got = exact(x), kernel(x)  # the kernel runs on the merged codes
    assert kernel[0].inference_path() == ("kernel", None) and kernel[0]._buffers["qweight"] is None
    assert (got - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_packed_model_round_trip_in_kernel_mode(tiny_llama, tmp_path):
    from slimtune.models import load_model
    from slimtune.quant import save_quantized

    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=False, progress=False)
    save_quantized(model, tmp_path / "a", tok)
    ids = tok("The market rallied on Tuesday as investors weighed the report.", return_tensors="pt").input_ids
    loaded, _ = load_model(tmp_path / "a", int4="kernel")
    assert all(m._buffers["qweight"] is None for m in loaded.modules() if isinstance(m, QuantLinear))
    save_quantized(loaded, tmp_path / "b", tok)  # written from the kernel's copies
    assert all(m._buffers["qweight"] is None for m in loaded.modules() if isinstance(m, QuantLinear))
    a, b = (load_model(tmp_path / d)[0] for d in ("a", "b"))
    qa, qb = ({n: m for n, m in net.named_modules() if isinstance(m, QuantLinear)} for net in (a, b))
    assert qa.keys() == qb.keys() and all(torch.equal(qa[n].codes(), qb[n].codes()) for n in qa)
    with torch.no_grad():
        ref, got = a(ids).logits.log_softmax(-1), loaded(ids).logits.log_softmax(-1)
    assert (ref - got).abs().max() < 0.05


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_embeddings_keep_the_tie_and_round_only_those_weights(tiny_llama_dir, dtype, monkeypatch):
    from slimtune.deploy import half
    from slimtune.models import load_model

    model, tok = load_model(tiny_llama_dir)
    hidden = model.config.hidden_size
    monkeypatch.setattr(half, "HEAD_BLOCK_BYTES", 7 * hidden * 4)  # blocks of 7 fp32 output rows, the last one short
    ids = tok("The market rallied on Tuesday.", return_tensors="pt").input_ids
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb  # tied
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.get_input_embeddings().weight.copy_(emb.to(getattr(torch, dtype)).float())
        saved = half_embeddings(model, dtype)
        assert half_embeddings(model, dtype) == 0  # idempotent
        got, ref = model(ids).logits, reference(ids).logits
    assert saved == emb.numel() * 2  # one tied weight: 4 -> 2 bytes each
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.dtype == getattr(torch, dtype) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_half_embeddings_untied_head_and_load_option(tiny_llama_dir, tmp_path):
    from slimtune.models import load_model

    model, tok = load_model(tiny_llama_dir)
    model.config.tie_word_embeddings = False
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone() * 0.5)
    model.save_pretrained(tmp_path / "untied")
    tok.save_pretrained(tmp_path / "untied")
    full, _ = load_model(tmp_path / "untied")
    half, _ = load_model(tmp_path / "untied", embeddings="float16")
    assert half.get_output_embeddings().weight is not half.get_input_embeddings().weight
    assert {half.get_output_embeddings().weight.dtype, half.get_input_embeddings().weight.dtype} == {torch.float16}
    ids = tok("Shares fell.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(half(ids).logits, full(ids).logits, rtol=0, atol=5e-3)


def test_evaluate_int4_kernel_and_half_embeddings(tiny_llama, tmp_path):
    from slimtune.api import evaluate
    from slimtune.quant import save_quantized

    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=True, progress=False)
    save_quantized(model, tmp_path / "q", tok)
    common = dict(task="none", perplexity_text="news", seq_len=32, max_windows=2, progress=False)
    exact = evaluate(tmp_path / "q", **common)
    fast = evaluate(tmp_path / "q", int4="kernel", embeddings="bfloat16", **common)
    assert exact["perplexity"] != fast["perplexity"]  # a different path ...
    assert abs(fast["perplexity"] / exact["perplexity"] - 1) < 0.02  # ... within the tolerance
