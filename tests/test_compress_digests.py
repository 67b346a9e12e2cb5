"""Pinned results of every sparsify / quantize method on the tiny Llama.

The digests were computed on the code before sparsify and quantize shared one compression skeleton
(slimtune.compress); a refactor of that skeleton must leave every weight, code, scale and report
entry bit for bit the same. Each digest is the sha256 of the model's whole state dict (names,
dtypes, shapes, bytes) and of the report (wall times left out).

Float results depend on the CPU kernels of the installed torch: after an intended change of
results, or on another torch build, print the new table with
`PYTHONPATH=src python tests/test_compress_digests.py` and check the change before pasting it.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

CAL = {"n_samples": 4, "seq_len": 32, "seed": 0, "batch_size": 2}   # two passes per layer
ONE = {**CAL, "batch_size": 4}                                        # single pass (the default)

# name -> (stage, method, kwargs, calibration or None); "sparse:" quantizes a 2:4 magnitude-pruned model.
CASES = {
    "magnitude-unstructured": ("sparsify", "magnitude", {"sparsity": 0.5}, None),
    "magnitude-row": ("sparsify", "magnitude", {"sparsity": 0.3, "options": {"scope": "row"}}, None),
    "magnitude-2:4": ("sparsify", "magnitude", {"pattern": "2:4"}, None),
    "wanda-unstructured": ("sparsify", "wanda", {"sparsity": 0.5}, CAL),
    "wanda-unstructured-1pass": ("sparsify", "wanda", {"sparsity": 0.5}, ONE),
    "wanda-2:4": ("sparsify", "wanda", {"pattern": "2:4"}, CAL),
    "sparsegpt-unstructured": ("sparsify", "sparsegpt", {"sparsity": 0.5}, CAL),
    "sparsegpt-unstructured-1pass": ("sparsify", "sparsegpt", {"sparsity": 0.5}, ONE),
    "sparsegpt-2:4": ("sparsify", "sparsegpt", {"pattern": "2:4"}, CAL),
    "rtn-sym": ("quantize", "rtn", {"group_size": 32}, None),
    "rtn-asym": ("quantize", "rtn", {"group_size": 32, "symmetric": False}, None),
    "rtn-mse-3bit": ("quantize", "rtn", {"bits": 3, "group_size": -1, "observer": "mse"}, None),
    "gptq-sym-actorder": ("quantize", "gptq", {"group_size": 32, "act_order": True}, CAL),
    "gptq-sym": ("quantize", "gptq", {"group_size": 32, "act_order": False}, CAL),
    "gptq-asym-actorder": ("quantize", "gptq", {"group_size": 32, "symmetric": False, "act_order": True}, CAL),
    "gptq-asym": ("quantize", "gptq", {"group_size": 32, "symmetric": False, "act_order": False}, CAL),
    "gptq-sym-1pass": ("quantize", "gptq", {"group_size": 32}, ONE),
    "gptq-minmax-sparse": ("quantize", "gptq", {"group_size": 32, "observer": "minmax", "sparse": True}, CAL),
}

DIGESTS = {
    'magnitude-unstructured': '3037c5e29b86bceaa68a601603db910e7c08933afc84372fb4bb2e92cd30c663',
    'magnitude-row': '6f3ead96a13bb73a713e2b1a9a7848563f06cfc001e1e9afad2f0f3732532d94',
    'magnitude-2:4': '0a66471b7abce06b6c339ba94e1fec55b7a6ef5f80c848d37f1b31e88e757bce',
    'wanda-unstructured': '7ab5f61d9f03ecc28a4fa53b3e65a2305b59fc7714deaa8a4b556d94191de8cf',
    'wanda-unstructured-1pass': '124953966664b5aa70173e764ef658f2dead4338e76686e5d532686aebc9b883',
    'wanda-2:4': '491da6473c4f73d94606c71aa9617d473dc81480a8c44f7ac363895ec3d1d8ce',
    'sparsegpt-unstructured': 'e8e2f17fe7fe89449b50e97f3f6aec078cf4c96a0b4ad50e8b497736d7879f0e',
    'sparsegpt-unstructured-1pass': 'fa3b2181d96a3977ff8ba2f984e87d6c8793d0f7952f6f999cd4b55be204107b',
    'sparsegpt-2:4': 'c303c748b70c2987e26553feee669f55e0bb2b92b7aebb019a39c4536f4de83c',
    'rtn-sym': '541282fd42b0a41e7f3b65c8ee12d2d29b78da4e7b308f98eb929571b05999a5',
    'rtn-asym': '8c18bbaeed653e850b7b004b64200d18591d67781749af9097b82bd3d7a01944',
    'rtn-mse-3bit': '248c3ee62377ce97f3ca590b8faa0a412db37606c800586de35b77b6f4e998f6',
    'gptq-sym-actorder': 'b9cae689df0a5fe8b2e21464848fbcedfa14c7040413793cf0c4f6399a9a61f0',
    'gptq-sym': '0483f6563380edf48c9bab9aea267ce81e42ac05d847982ac3b739efc2ebcbb2',
    'gptq-asym-actorder': '2eb6c6753239404be4f557e5aff4444996a337ca7ca9f8e209e2e920f87b9748',
    'gptq-asym': '3c2535947bc7636aff2c1bf3cf7a672e226f05a26afb79590138c96f72a16850',
    'gptq-sym-1pass': '3aef5a7664c96050469af98446203a5a3c59971b5227ec277094f72e56092746',
    'gptq-minmax-sparse': '0d0824b0ff8bc11e6f5646a9d934f46b5fe19c868498a93df551a2a192cf1f79',
}


def _digest(model, report: dict) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    clean = json.loads(json.dumps(report, default=str))
    clean.get("total", {}).pop("wall_time_s", None)
    h.update(json.dumps(clean, sort_keys=True).encode())
    return h.hexdigest()


def run_case(model_dir, text: str, case: str) -> str:
    from slimtune.models import load_model
    from slimtune.quant import quantize_model
    from slimtune.sparsity import sparsify_model

    stage, method, kwargs, cal = CASES[case]
    kwargs = dict(kwargs)
    torch.manual_seed(0)
    model, tok = load_model(model_dir)
    calibration = None if cal is None else {"source": text, **cal}
    if kwargs.pop("sparse", False):
        sparsify_model(model, tok, "magnitude", pattern="2:4", progress=False)
    if stage == "sparsify":
        report = sparsify_model(model, tok, method, calibration=calibration, progress=False, **kwargs)
    else:
        report = quantize_model(model, tok, method, calibration=calibration, progress=False, **kwargs)
    return _digest(model, report)


# The digests were computed with torch 2.13.0's CPU kernels on an AVX512 machine; other kernels round
# differently in the last bit, which says nothing about the code.
PINNED_ON = ("2.13.0", "AVX512")


@pytest.mark.skipif((torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability()) != PINNED_ON,
                    reason=f"digests pinned on torch/CPU kernels {PINNED_ON}")
@pytest.mark.parametrize("case", sorted(CASES))
def test_results_pinned(tiny_llama_dir, news_snippet, case):
    assert run_case(tiny_llama_dir, news_snippet, case) == DIGESTS[case]


if __name__ == "__main__":  # print the table (see the module docstring)
    import tempfile

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from slimtune.data import load_text
    from slimtune.models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(tmp, arch="llama", seed=0)
        snippet = load_text("news")[:20000]
        for case in CASES:
            print(f"    {case!r}: {run_case(path, snippet, case)!r},")
