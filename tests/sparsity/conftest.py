import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_sparsity") / "model")


@pytest.fixture
def tiny(tiny_path):
    """A fresh tiny Llama (hidden 64, intermediate 128, 2 layers) per test: tests prune it in place."""
    from slimtune.models import load_model

    return load_model(tiny_path)


@pytest.fixture(scope="session")
def calib_text():
    """Raw text used as the calibration source (short, so tokenizing it is instant)."""
    from slimtune.data import load_text

    return load_text("news")[:20000]


@pytest.fixture(scope="session")
def calib(calib_text):
    return {"source": calib_text, "n_samples": 4, "seq_len": 32, "seed": 0, "batch_size": 2}
