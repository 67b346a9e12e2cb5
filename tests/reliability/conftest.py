"""Shared pieces of the reliability tests (issue 20): small artifacts built once per session."""

import pytest

TRAIN = {"max_steps": 4, "save_steps": 2, "batch_size": 4, "warmup_steps": 0, "learning_rate": 1e-2}


@pytest.fixture(scope="session")
def qa_stack(tiny_llama_dir, tmp_path_factory):
    """tiny -> 50% magnitude sparse -> RTN INT4 -> QA-SparsePEFT nls super-adapters ('float' and 'quantized'
    QA weights) -> their median sub-adapters."""
    from slimtune import api

    root = tmp_path_factory.mktemp("qa")
    sparse = api.sparsify(tiny_llama_dir, out=root / "sparse", method="magnitude", sparsity=0.5, progress=False)
    int4 = api.quantize(sparse, out=root / "int4", method="rtn", bits=4, group_size=32, progress=False)
    out = {"root": root, "sparse": sparse, "int4": int4}
    for qa in ("float", "quantized"):
        sup = api.finetune(int4, out=root / f"super-{qa}", adapter="nls", rank=4, sparse_adapter=True,
                           quant_aware=True, qa_weights=qa, progress=False, **TRAIN)
        out[qa] = api.extract(sup, out=root / f"sub-{qa}", select="median", progress=False)
    return out
