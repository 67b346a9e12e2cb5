import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama (2 layers, hidden 64) with a BPE tokenizer trained on real news text."""
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    """A tiny Gemma-3 (4 layers, sliding window 8, layer 2 full attention) whose tokenizer adds <bos>."""
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma3"), arch="gemma3", seed=0)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), arch="bert", seed=0)


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from slimtune.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_llama_dir)


@pytest.fixture(scope="session")
def news_snippet():
    """20,000 characters of the news text: a calibration source that tokenizes instantly."""
    from slimtune.data import load_text

    return load_text("news")[:20000]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
