import pytest


@pytest.fixture
def tiny(tiny_llama):
    """A fresh tiny Llama (hidden 64, intermediate 128, 2 layers) per test: tests prune it in place."""
    return tiny_llama


@pytest.fixture(scope="session")
def calib(news_snippet):
    return {"source": news_snippet, "n_samples": 4, "seq_len": 32, "seed": 0, "batch_size": 2}
