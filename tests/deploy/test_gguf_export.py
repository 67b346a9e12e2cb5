"""GGUF export: the INT4 grid carried over (codes bit for bit, scales up to fp16), zeros kept, the
file read back by gguf's reader and by transformers' GGUF loader with the same logits and tokens."""

import gguf
import numpy as np
import pytest
import torch

from slimtune.deploy.gguf_export import _rope_permute, export_gguf
from slimtune.errors import ConfigError
from slimtune.quant import quant_linears, quantize_model

TEXT = "The market rallied 123 points on Tuesday as investors weighed the report."


def _sparse_quantized(tiny_llama, group, symmetric, bits=4):
    model, tok = tiny_llama
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith(("_proj",)):
                m.weight[m.weight.abs() < 0.01] = 0.0  # about half of the weights pruned
    quantize_model(model, tok, "rtn", bits=bits, group_size=group, symmetric=symmetric, progress=False)
    return model, tok


def _gguf_weights(path, model):
    """{hf module name: dequantized [out, in] float32} read back with gguf's reader (rope order undone)."""
    reader = gguf.GGUFReader(str(path))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    out, types = {}, {}
    for name in quant_linears(model):
        target = names.get_name(name + ".weight", try_suffixes=(".weight",))
        t = next(t for t in reader.tensors if t.name == target)
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
        if name.endswith(("q_proj", "k_proj")):  # inverse of the export's permutation
            h = n_head if name.endswith("q_proj") else n_kv
            w = w.reshape(h, w.shape[0] // h // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        out[name], types[name] = w, t.tensor_type
    return out, types


@pytest.mark.parametrize("group,symmetric,qtype", [(32, True, "Q4_0"), (64, False, "Q4_1"), (-1, True, "Q4_0")])
def test_grid_carried_over(tiny_llama, tmp_path, group, symmetric, qtype):
    model, tok = _sparse_quantized(tiny_llama, group, symmetric)
    report = export_gguf(model, tok, tmp_path / "m.gguf")
    assert report["inexact_zero_blocks"] == 0 and report["file_type"] == qtype
    weights, types = _gguf_weights(tmp_path / "m.gguf", model)
    for name, m in quant_linears(model).items():
        ref = m.dequantized_weight().numpy()
        got = weights[name]
        assert types[name].name == qtype
        assert np.array_equal(got == 0, ref == 0), name  # zeros stay zeros, and no new ones
        # fp16 scale (Q4_1: with up to 4 significand bits dropped so that m = -d z is exact)
        rtol = 2 ** -11 if symmetric else 2 ** -7
        assert np.all(np.abs(got - ref) <= rtol * np.abs(ref) + 1e-7), name


def test_permutation_is_llama_cpp_rotary_order():
    a = np.arange(8 * 3).reshape(8, 3)
    p = _rope_permute(a, 2)  # head of 4 rows: [0, 2, 1, 3]
    assert p[:4, 0].tolist() == [0, 6, 3, 9]


def test_transformers_reads_it_back_with_same_logits_and_tokens(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = _sparse_quantized(tiny_llama, 32, False)
    export_gguf(model, tok, tmp_path / "m.gguf", embed_type="f32")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    htok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert htok(TEXT).input_ids == tok(TEXT).input_ids
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = model(ids).logits.log_softmax(-1), hf(ids).logits.log_softmax(-1)
    assert (ref - got).abs().max() < 1e-2


@pytest.mark.parametrize("float_type,embed_type", [("f16", "q8_0"), ("bf16", "bf16"), ("q8_0", "f16")])
def test_float_model(tiny_llama, tmp_path, float_type, embed_type):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama
    report = export_gguf(model, tok, tmp_path / "f.gguf", float_type=float_type, embed_type=embed_type)
    assert report["file_type"] == float_type.upper()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="f.gguf", dtype=torch.float32)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(ids).logits.log_softmax(-1) - hf(ids).logits.log_softmax(-1)).abs().max() < 2e-2


def test_unsupported_grids_refused_unless_requantized(tiny_llama, tmp_path):
    model, tok = _sparse_quantized(tiny_llama, 16, True)
    with pytest.raises(ConfigError, match="group size 16 .* requantize=q4_0"):
        export_gguf(model, tok, tmp_path / "m.gguf")
    report = export_gguf(model, tok, tmp_path / "m.gguf", requantize="q8_0")
    assert report["tensors"]["Q8_0"] == 15  # 14 linears + the embedding


def test_8bit_symmetric_is_q8_0(tiny_llama, tmp_path):
    model, tok = _sparse_quantized(tiny_llama, 32, True, bits=8)
    export_gguf(model, tok, tmp_path / "m.gguf", embed_type="f16")
    weights, types = _gguf_weights(tmp_path / "m.gguf", model)
    for name, m in quant_linears(model).items():
        ref = m.dequantized_weight().numpy()
        assert types[name].name == "Q8_0" and np.array_equal(weights[name] == 0, ref == 0)
        assert np.allclose(weights[name], ref, rtol=2 ** -11, atol=1e-7)


def test_other_architectures_refused(tiny_gemma3_dir, tmp_path):
    from slimtune.models import load_model

    model, tok = load_model(tiny_gemma3_dir)
    with pytest.raises(ConfigError, match="GGUF export supports model types llama"):
        export_gguf(model, tok, tmp_path / "g.gguf")


def test_export_stage_and_cli(tiny_llama_dir, tmp_path):
    from slimtune import cli
    from slimtune.artifacts import check_artifact

    assert cli.main(["quantize", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "q"), "--method", "rtn",
                      "--group-size", "32"]) == 0
    assert cli.main(["export", "--model", str(tmp_path / "q"), "--out", str(tmp_path / "g")]) == 0
    manifest = check_artifact(tmp_path / "g")
    assert manifest["stage"] == "export" and manifest["metrics"]["file_type"] == "Q4_0"
    assert (tmp_path / "g" / "model.gguf").stat().st_size == manifest["metrics"]["bytes"]
    assert cli.main(["export", "--model", str(tmp_path / "q"), "--out", str(tmp_path / "c"), "--format", "compressed-tensors",
                     "--embeddings", "float16"]) == 0
    from slimtune.models import load_model

    a, tok = load_model(tmp_path / "q")
    b, _ = load_model(tmp_path / "c")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (a(ids).logits - b(ids).logits).abs().max() < 1e-2
    assert (tmp_path / "c" / "model.safetensors").stat().st_size < (tmp_path / "q" / "model.safetensors").stat().st_size
