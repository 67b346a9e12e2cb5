"""StaticDecoder: greedy tokens from a static cache equal transformers' own greedy generation, the compiled
step equals the eager one (on an INT4 model through the int4 kernel, whose forward has a compile path), and
bad requests are refused before any work."""

import pytest
import torch

from slimtune.deploy.decode import StaticDecoder, cpp_compiler
from slimtune.errors import ConfigError
from slimtune.models import load_model
from slimtune.quant import quantize_model
from slimtune.quant.formats import save_quantized

TEXT = "The market rallied 123 points on Tuesday as investors weighed the report."


def test_eager_static_decoding_equals_transformers_greedy(tiny_llama):
    model, tok = tiny_llama
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)[:, ids.shape[1]:]
    got = StaticDecoder(model, max_length=64, compile=False).generate(ids, 12)
    assert got.shape == (1, 12) and torch.equal(got, ref)


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_the_compiled_step_equals_the_eager_one_on_the_int4_kernel(tiny_llama, tmp_path):
    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=False, progress=False)
    save_quantized(model, tmp_path, tok)
    net, _ = load_model(tmp_path, int4="kernel", embeddings="int4")
    ids = tok(TEXT, return_tensors="pt").input_ids
    eager = StaticDecoder(net, max_length=48, compile=False).generate(ids, 8)
    decoder = StaticDecoder(net, max_length=48)
    assert torch.equal(decoder.generate(ids, 8), eager)
    assert torch.equal(decoder.generate(ids[:, :5], 8), StaticDecoder(net, 48, compile=False).generate(ids[:, :5], 8))


def test_bad_requests_are_refused(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    decoder = StaticDecoder(model, max_length=16, compile=False)
    with pytest.raises(ConfigError, match="do not fit max_length 16"):
        decoder.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    with pytest.raises(ConfigError, match=r"ids must be \[1, T\], got \[2, 3\]"):
        decoder.generate(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ConfigError, match="16 prompt tokens leave no room for a new one in max_length 16"):
        decoder.prefill(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"step before any prompt: call prefill\(ids\) first"):
        StaticDecoder(model, max_length=16, compile=False).step(torch.zeros(1, 1, dtype=torch.long), 0)
    with pytest.raises(ConfigError, match="max_length 1"):
        StaticDecoder(model, max_length=1)
    monkeypatch.setattr("slimtune.deploy.decode.cpp_compiler", lambda: None)
    with pytest.raises(ConfigError, match="needs a C.. compiler .* or decode without compile"):
        StaticDecoder(model, max_length=16)


def test_generate_continues_a_prompt_as_transformers_greedy_does(tiny_llama_dir, capsys):
    from slimtune import api
    from slimtune.cli import main

    net, tok = load_model(tiny_llama_dir)
    result = api.generate(tiny_llama_dir, TEXT, max_new_tokens=10, int4="dequantize")
    ids = torch.tensor([[tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
                        + tok.encode(TEXT, add_special_tokens=False)])
    with torch.no_grad():
        ref = net.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
    assert result["tokens"] == ref[:result["new_tokens"]] and 1 <= result["new_tokens"] <= 10
    assert result["text"] == tok.decode(ref[:result["new_tokens"]], skip_special_tokens=True)
    assert main(["generate", "--model", str(tiny_llama_dir), "--prompt", TEXT, "--max-new-tokens", "10"]) in (0, None)
    assert capsys.readouterr().out.strip() == result["text"].strip()


def test_generate_refuses_bad_prompts(tiny_llama_dir):
    from slimtune import api

    with pytest.raises(ConfigError, match="the prompt is empty"):  # before the model is looked for
        api.generate("no-such-model", "  ")
    with pytest.raises(ConfigError, match="exceed the model's 512 positions"):
        api.generate(tiny_llama_dir, TEXT * 60, max_new_tokens=8)
