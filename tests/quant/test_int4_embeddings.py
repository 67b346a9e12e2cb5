"""INT4 embeddings in memory (`load_model(..., embeddings="int4")`): a compact export's stored codes are used as
they are (the model in memory is the exported one), a float model's embedding gets the compact recipe's grid,
the lookup is exactly that grid's values, the head is a QuantLinear of the same codes, and bad models are named."""

import pytest
import torch

from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.quant import quantize_model
from slimtune.quant.compact import embedding_grid, read_compact_embeddings, write_compact
from slimtune.quant.int4_embeddings import Int4Embedding, int4_embeddings
from slimtune.quant.linear import QuantLinear

TEXT = "The market rallied 123 points on Tuesday as investors weighed the report."


def test_a_compact_exports_stored_codes_are_used_exactly(tiny_llama, tmp_path):
    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=False, progress=False)
    write_compact(model, tmp_path, tok, embeddings="int4")
    [(_, _, params, codes)] = list(read_compact_embeddings(tmp_path))
    exact, _ = load_model(tmp_path)
    net, _ = load_model(tmp_path, embeddings="int4")
    emb, head = net.get_input_embeddings(), net.get_output_embeddings()
    assert isinstance(emb, Int4Embedding) and isinstance(head, QuantLinear)
    assert torch.equal(head.codes(), codes) and torch.equal(head.scales, params.scales)
    assert head.scales is emb.scales and head.zeros is emb.zeros  # the tied pair holds one grid
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(emb(ids), exact.get_input_embeddings()(ids))  # exactly s * (q - z) of the stored grid
        assert torch.equal(net(ids).logits, exact(ids).logits)  # the dequantized head: the same model, bit for bit


def test_a_float_embedding_gets_the_compact_grid(tiny_llama):
    model, tok = tiny_llama
    params, codes = embedding_grid(model.model.embed_tokens.weight, "int4")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        on_grid = params.dequantize(codes)
        int4_embeddings(model, "dequantize")
        got = model(ids).logits
        model.set_input_embeddings(torch.nn.Embedding.from_pretrained(on_grid))  # the same model in float
        head = torch.nn.Linear(on_grid.shape[1], on_grid.shape[0], bias=False)
        head.weight.copy_(on_grid)
        model.set_output_embeddings(head)
        assert torch.equal(got, model(ids).logits)
    assert (codes.float().mean() - 7.5).abs() < 2  # the codes use the grid, not a corner of it


def test_the_kernel_head_agrees_within_the_kernels_tolerance(tiny_llama_dir):
    exact, tok = load_model(tiny_llama_dir, embeddings="int4")
    kernel, _ = load_model(tiny_llama_dir, int4="kernel", embeddings="int4")
    assert kernel.get_output_embeddings().inference_path() == ("kernel", None)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = exact(ids).logits.log_softmax(-1), kernel(ids).logits.log_softmax(-1)
    assert (a - b).abs().max() < 0.1 and torch.equal(a.argmax(-1), b.argmax(-1))


def test_models_it_cannot_hold_are_named(tiny_llama):
    model, _ = tiny_llama
    model.model.embed_tokens = torch.nn.Embedding(512, 40)
    with pytest.raises(ConfigError, match="width 40 is not a multiple of it"):
        int4_embeddings(model)
    with pytest.raises(ConfigError, match="embeddings .int2.: choose from float16, bfloat16, int4"):
        load_model("no-such-model", embeddings="int2")  # refused before loading


def test_gemma_keeps_its_embedding_scale(tmp_path):
    """Gemma multiplies its looked-up rows by sqrt(hidden) inside the embedding module: kept."""
    from slimtune.models import build_tiny_model

    directory = build_tiny_model(tmp_path / "gemma3", arch="gemma3")
    float_net, tok = load_model(directory)
    net, _ = load_model(directory, embeddings="int4")
    params, codes = embedding_grid(float_net.get_input_embeddings().weight, "int4")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        float_net.get_input_embeddings().weight.copy_(params.dequantize(codes))  # tied: the head too
        assert torch.equal(net(ids).logits, float_net(ids).logits)
