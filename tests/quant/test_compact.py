"""slimtune's compact format: the packed layers' codes and grids read back bit for bit (pruned codes behind a
bitmask, layers that the mask would not shrink kept dense), the embedding cast or quantized (int8 / int4,
float16 scales stored exactly), the export stage, inspect, and damaged directories named."""

import json

import pytest
import torch

from slimtune.errors import ArtifactError, ConfigError
from slimtune.quant import quant_linears, quantize_model
from slimtune.quant.compact import COMPACT_FILE, COMPACT_META, EMBEDDING_GRIDS, load_compact, write_compact
from slimtune.quant.packing import packed_width

TEXT = "The market rallied 123 points on Tuesday as investors weighed the report."


@pytest.fixture()
def half_pruned(tiny_llama):
    """The tiny Llama with block 0's linears about half pruned (block 1 dense), INT4 g32 asymmetric."""
    model, tok = tiny_llama
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith("_proj") and ".layers.0." in name:
                m.weight[m.weight.abs() < 0.01] = 0.0
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=False, progress=False)
    return model, tok


def test_codes_and_grids_read_back_exactly(half_pruned, tmp_path):
    model, tok = half_pruned
    parts = write_compact(model, tmp_path, tok, embeddings="float32")
    storage = json.loads((tmp_path / COMPACT_META).read_text())["layers"]
    assert {n: s for n, s in storage.items()} == {n: "bitmask" if ".layers.0." in n else "dense" for n in storage}
    assert parts["sparse_layers"] == 7 and parts["dense_layers"] == 7

    again, _ = load_compact(tmp_path)
    for name, m in quant_linears(model).items():
        twin = quant_linears(again)[name]
        assert twin.params == m.params, name  # byte-identical grid: QA-SparsePEFT's exact merge still holds
        assert torch.equal(twin.codes(), m.codes()), name
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied


def test_a_masked_layer_takes_the_bytes_of_its_mask_and_its_non_zero_codes(half_pruned, tmp_path):
    from safetensors import safe_open

    model, tok = half_pruned
    write_compact(model, tmp_path, tok, embeddings="float16")
    name = "model.layers.0.mlp.down_proj"
    m = quant_linears(model)[name]
    zero_code = m.zeros.to(torch.int32).repeat_interleave(32, dim=1)
    nnz = int((m.codes().to(torch.int32) != zero_code).sum())
    assert 0.3 < 1 - nnz / m.codes().numel() < 0.7
    with safe_open(str(tmp_path / COMPACT_FILE), "pt") as st:
        assert f"{name}.weight_packed" not in st.keys()
        assert st.get_tensor(f"{name}.weight_mask").shape == (m.out_features, packed_width(m.in_features, 1))
        assert st.get_tensor(f"{name}.weight_values").shape == (1, packed_width(nnz, 4))
        assert st.get_tensor("model.embed_tokens.weight").dtype == torch.float16
        assert "model.layers.1.mlp.down_proj.weight_packed" in st.keys()  # dense: a mask would not save bytes


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_embedding_is_its_stored_grid_exactly(half_pruned, tmp_path, kind):
    from slimtune.quant.compact import read_compact_embeddings
    from slimtune.quant.params import compute_params

    model, tok = half_pruned
    original = model.model.embed_tokens.weight.detach().clone()
    parts = write_compact(model, tmp_path, tok, embeddings=kind)
    bits, group, symmetric, observer = EMBEDDING_GRIDS[kind]
    rows, cols = original.shape
    groups = 1 if group == -1 else cols // group
    words = packed_width(cols, bits) + (0 if symmetric else packed_width(groups, bits))  # codes, zero points
    assert parts["embeddings"] == rows * (4 * words + 2 * groups)  # + float16 scales

    again, _ = load_compact(tmp_path)
    loaded = again.model.embed_tokens.weight.detach()
    assert again.lm_head.weight is again.model.embed_tokens.weight
    [(key, grid, params, codes)] = list(read_compact_embeddings(tmp_path))
    assert key == "model.embed_tokens.weight" and grid["bits"] == bits and params.bits == bits
    assert torch.equal(params.dequantize(codes), loaded)
    error = (loaded - original).square().sum()
    assert 0 < error  # lossy against the float embedding, as documented
    minmax = compute_params(original, bits, group, symmetric)
    if observer == "minmax":  # scales rounded up: every weight within half a step
        step = minmax.scales.repeat_interleave(cols // groups, dim=1)
        assert bool(((loaded - original).abs() <= 0.5 * step * (1 + 2 ** -9) + 1e-7).all())
    else:  # mse: less squared error than the min-max grid
        assert error < 0.95 * (minmax.dequantize(minmax.quantize(original)) - original).square().sum()


def test_export_stage_inspect_and_loading(half_pruned, tmp_path):
    from slimtune import api
    from slimtune.artifacts import check_artifact
    from slimtune.deploy.export import export
    from slimtune.models import load_model
    from slimtune.quant.formats import save_quantized

    model, tok = half_pruned
    save_quantized(model, tmp_path / "q", tok)
    out = export(tmp_path / "q", out=tmp_path / "c", format="compact", embeddings="int4")
    manifest = check_artifact(out)
    assert manifest["metrics"]["bytes"] == sum(f.stat().st_size for f in out.iterdir() if f.name != "slimtune.json")
    assert (out / COMPACT_FILE).stat().st_size < 0.6 * (tmp_path / "q" / "model.safetensors").stat().st_size

    summary = api.inspect(out)
    packed = api.inspect(tmp_path / "q")
    for name, m in packed["matrices"].items():
        if m["prunable"]:
            assert summary["matrices"][name]["sparsity"] == m["sparsity"] and summary["matrices"][name]["bits"] == 4
    assert summary["matrices"]["model.embed_tokens.weight"]["bits"] == 4
    assert summary["total"] == packed["total"]

    loaded, _ = load_model(out, int4="dequantize")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (loaded(ids).logits - model(ids).logits).abs().max() < 0.1
    from transformers import AutoModelForCausalLM

    with pytest.raises(OSError, match="model.safetensors|pytorch_model.bin"):  # transformers says it cannot read it
        AutoModelForCausalLM.from_pretrained(out)


def test_bad_options_and_damaged_directories_are_named(half_pruned, tiny_llama_dir, tmp_path):
    from slimtune.configs import ExportConfig
    from slimtune.models import load_model

    model, tok = half_pruned
    with pytest.raises(ConfigError, match="embeddings='int2': choose from"):
        write_compact(model, tmp_path / "x", tok, embeddings="int2")
    with pytest.raises(ValueError, match="quantized embeddings need format compact"):
        ExportConfig.build(None, {"format": "compressed-tensors", "embeddings": "int4"})
    with pytest.raises(ValueError, match=r"a compact export .* set embeddings to float16 or bfloat16 \(or int8 / int4\)"):
        ExportConfig.build(None, {"format": "compact"})
    plain, _ = load_model(tiny_llama_dir)
    with pytest.raises(ArtifactError, match="no QuantLinear modules: quantize it first"):
        write_compact(plain, tmp_path / "y", tok, embeddings="int4")

    write_compact(model, tmp_path, tok, embeddings="int4")
    meta = json.loads((tmp_path / COMPACT_META).read_text())
    meta["layers"]["model.layers.0.mlp.extra_proj"] = "bitmask"
    (tmp_path / COMPACT_META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks tensor .*extra_proj"):
        load_compact(tmp_path)
    meta["version"] = 99
    (tmp_path / COMPACT_META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="slimtune-compact v99 directory; this slimtune reads slimtune-compact v1"):
        load_compact(tmp_path)


def test_a_packed_layer_the_config_does_not_have_is_named(half_pruned, tmp_path):
    from safetensors.torch import load_file, save_file

    from slimtune.quant.formats import WEIGHTS_FILE, load_quantized, save_quantized

    model, tok = half_pruned
    save_quantized(model, tmp_path, tok)
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    layer = "model.layers.1.mlp.down_proj"
    renamed = {k.replace(layer, "model.layers.1.mlp.extra_proj"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / WEIGHTS_FILE), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="packed layer model.layers.1.mlp.extra_proj is not a module"):
        load_quantized(tmp_path)
