import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def qtiny_path(tmp_path_factory):
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_quant") / "model")


@pytest.fixture
def qtiny(qtiny_path):
    """A fresh tiny Llama (hidden 64, intermediate 128, 2 layers) per test: tests quantize it in place."""
    from slimtune.models import load_model

    return load_model(qtiny_path)


@pytest.fixture(scope="session")
def qcalib():
    from slimtune.data import load_text

    return {"source": load_text("news")[:20000], "n_samples": 4, "seq_len": 32, "seed": 0, "batch_size": 2}
