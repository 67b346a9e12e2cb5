import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ArtifactError, ConfigError
from slimtune.models import load_model
from slimtune.quant import QuantLinear, quant_linears

CALIB = {"n_samples": 4, "seq_len": 64}


@pytest.fixture(scope="module")
def sparse_dir(tiny_llama_dir, tmp_path_factory):
    return api.sparsify(tiny_llama_dir, out=tmp_path_factory.mktemp("s") / "sparse", method="wanda", sparsity=0.5,
                        calibration=CALIB, progress=False)


def test_cli_gptq_on_sparse_base_keeps_zeros_and_loads_everywhere(sparse_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(sparse_dir), "--method", "gptq", "--bits", "4", "--group-size", "32",
                 "--asym", "--act-order", "--samples", "4", "--seq-len", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "INT4 g32 asym" in printed and "total over 73,728 prunable weights: 50.00% zero" in printed

    sparse, _ = load_model(sparse_dir)
    ours, tok = load_model(out)  # slimtune's loader rebuilds QuantLinear modules
    qls = quant_linears(ours)
    assert len(qls) == 14 and all(isinstance(m, QuantLinear) for m in qls.values())
    for name, m in qls.items():  # sparsity before == after, to the last weight
        before = sparse.get_submodule(name).weight == 0
        assert torch.equal(m.dequantized_weight() == 0, before), name

    plain = AutoModelForCausalLM.from_pretrained(out)  # transformers + compressed-tensors
    ids = tok("The market closed higher on Friday.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)

    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["stage"] == "quantize" and manifest["config"]["symmetric"] is False
    assert manifest["config"]["act_order"] is True and manifest["config"]["calibration"]["n_samples"] == 4
    assert manifest["metrics"]["quantized_layers"] == 14 and manifest["metrics"]["zeros"] == 73728 // 2
    assert manifest["metrics"]["zeros_after"] >= 73728 // 2 and manifest["metrics"]["sparsity"] >= 0.5
    # 4-bit codes + one float32 scale and int8 zero point per 32 weights
    assert manifest["metrics"]["bytes_per_weight"] == pytest.approx(0.5 + 5 / 32, abs=1e-3)


def test_rtn_round_trip_through_api(tiny_llama_dir, tmp_path):
    out = api.quantize(tiny_llama_dir, out=tmp_path / "rtn", method="rtn", bits=8, group_size=-1, progress=False)
    summary = api.inspect(out)
    bits = {m.get("bits") for k, m in summary["matrices"].items() if m["prunable"]}
    assert bits == {8}
    model, _ = load_model(out)
    assert {m.group_size for m in quant_linears(model).values()} == {-1}
    # symmetric INT8, one group per row: codes + one float32 scale per row (zero point implied)
    rows = sum(m.out_features for m in quant_linears(model).values())
    weights = sum(m.out_features * m.in_features for m in quant_linears(model).values())
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["metrics"]["bytes_per_weight"] == pytest.approx(1 + 4 * rows / weights, abs=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 5}, "bits=5 is not supported; choose from 2, 3, 4, 8"),
    ({"method": "awq"}, "unknown quantization method 'awq'; known methods: gptq, rtn"),
    ({"group_size": 48}, r"group size 48 does not divide model\.layers\.0\.self_attn\.q_proj's 64 inputs; "
                         r"group sizes that divide every quantized layer: 2, 4, 8, 16, 32, 64"),
    ({"group_size": 0}, "group_size must be a positive integer or -1"),
    ({"skip": ["*"]}, "no linear module left to quantize"),
    ({"calibration": {"n_samples": 0}}, "calibration.n_samples: Input should be greater than or equal to 1"),
])
def test_bad_input_is_rejected_before_work(tiny_llama_dir, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        api.quantize(tiny_llama_dir, out=tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory either


def test_existing_output_is_not_touched(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    with pytest.raises(ArtifactError, match="already exists; choose another --out or pass --overwrite"):
        api.quantize(tiny_llama_dir, out=out, method="rtn", progress=False)
    assert (out / "keep.txt").read_text() == "earlier result"


def test_quantizing_a_quantized_model_is_an_error(tiny_llama_dir, tmp_path):
    once = api.quantize(tiny_llama_dir, out=tmp_path / "once", method="rtn", progress=False)
    with pytest.raises(ConfigError, match="already quantized"):
        api.quantize(once, out=tmp_path / "twice", method="rtn", progress=False)


def test_reads_packed_zero_points_of_the_standard_group_layout(tiny_llama_dir, tmp_path):
    """llm-compressor writes asymmetric group grids with int32 zero points packed along the output
    dimension (compressed-tensors' pack_to_int32); slimtune writes 'block' with int8 zero points.
    Rewrite slimtune's export into the standard layout with compressed-tensors' own packer and
    check both loaders agree with slimtune's forward."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file, save_file

    out = api.quantize(tiny_llama_dir, out=tmp_path / "q", method="rtn", bits=4, group_size=32, symmetric=False,
                       progress=False)
    ours, tok = load_model(out)
    tensors = load_file(out / "model.safetensors")
    for key in [k for k in tensors if k.endswith("weight_zero_point")]:
        tensors[key] = pack_to_int32(tensors[key], 4, packed_dim=0)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    for group in config["quantization_config"]["config_groups"].values():
        group["weights"].update(strategy="group", group_size=32, block_structure=None)
    (out / "config.json").write_text(json.dumps(config))

    again, _ = load_model(out)
    for name, m in quant_linears(again).items():
        assert m.params == quant_linears(ours)[name].params, name
    ids = tok("Prices rose again.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ours(ids).logits)
