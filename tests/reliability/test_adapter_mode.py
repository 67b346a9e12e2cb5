"""Issue 20, item 4: an adapter's mode (sparse, quantization-aware) is never dropped, whatever happened to its
manifest: it is read from what the adapter files record, or the merge stops with a clear error."""

import json
import shutil

import pytest
import torch

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ArtifactError
from slimtune.models import load_model
from slimtune.quant import quant_linears


def _damage(adapter, tmp_path, how):
    copy = tmp_path / f"sub-{how}"
    shutil.copytree(adapter, copy)
    if how == "missing":
        (copy / "slimtune.json").unlink()
    elif how == "garbage":
        (copy / "slimtune.json").write_text("{\"stage\": \"extr")
    else:  # valid JSON, not a manifest
        (copy / "slimtune.json").write_text("[1, 2, 3]")
    return copy


def test_a_qa_sub_adapter_without_its_manifest_keeps_its_mode(qa_stack, tmp_path):
    adapter = _damage(qa_stack["quantized"], tmp_path, "missing")
    assert api.inspect(adapter)["peft_compatible"] is False
    reference = api.merge(qa_stack["quantized"], out=tmp_path / "ref")
    merged = api.merge(adapter, out=tmp_path / "merged", model=qa_stack["int4"])
    assert json.loads((merged / "slimtune.json").read_text())["method"] == "quantized"  # on the INT4 grid
    net, tok = load_model(merged)
    ref, _ = load_model(reference)
    assert quant_linears(net) and {q.bits for q in quant_linears(net).values()} == {4}
    ids = tok("prices rose", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(net(ids).logits, ref(ids).logits)
    # the base is still found from the adapter's own config when --model is not given
    assert api.merge(adapter, out=tmp_path / "again").is_dir()


@pytest.mark.parametrize("how", ["garbage", "list"])
def test_a_damaged_manifest_is_reported_not_ignored(qa_stack, tmp_path, how):
    """The manifest carries the lineage that keeps evaluation held out: a damaged one stops the merge."""
    adapter = _damage(qa_stack["quantized"], tmp_path, how)
    summary = api.inspect(adapter)  # the files can still be described, with the damage
    assert summary["peft_compatible"] is False and "the artifact is damaged" in summary["manifest_error"]
    with pytest.raises(ArtifactError, match="slimtune.json is not .*; the artifact is damaged"):
        api.merge(adapter, out=tmp_path / "m", model=qa_stack["int4"])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("how", ["missing"])
def test_a_float_qa_sub_adapter_without_its_manifest_is_refused_clearly(qa_stack, tmp_path, capsys, how):
    adapter = _damage(qa_stack["float"], tmp_path, how)
    with pytest.raises(ArtifactError, match="quantization-aware adapter merged into float weights .* names no float_base"):
        api.merge(adapter, out=tmp_path / "m", model=qa_stack["int4"])
    assert main(["merge", "--adapter", str(adapter), "--model", str(qa_stack["int4"]), "--out", str(tmp_path / "m")]) == 2
    assert "names no float_base" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_an_adapter_config_stripped_of_its_mode_is_refused(qa_stack, tmp_path):
    adapter = _damage(qa_stack["quantized"], tmp_path, "missing")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"} | {"slimtune": None}))
    with pytest.raises(ArtifactError, match="has no adapter_model.safetensors"):  # its weights are not a plain LoRA's
        api.merge(adapter, out=tmp_path / "m", model=qa_stack["int4"])
    del config["slimtune"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="peft_type is"):
        api.merge(adapter, out=tmp_path / "m", model=qa_stack["int4"])
    assert not (tmp_path / "m").exists()
