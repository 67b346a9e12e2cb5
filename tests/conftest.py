import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _real_bigbench() -> bool:
    """Whether BIG-bench's own task files are here ($SLIMTUNE_BIGBENCH_DIR, the cache, or the registry)."""
    from slimtune.data import bigbench
    from slimtune.errors import DataError

    try:
        bigbench.tasks_root()
        return True
    except DataError:
        return False


def pytest_configure(config):
    # The registry stopped serving bigbench==1.0.0: without the real files, the tests run on the
    # BIG-bench-format toy tasks (tests/toy_bigbench.py) and the tests of real-task facts are skipped.
    config.real_bigbench = _real_bigbench()
    if not config.real_bigbench:
        import tempfile

        from toy_bigbench import write_toy_bigbench

        os.environ["SLIMTUNE_BIGBENCH_DIR"] = str(write_toy_bigbench(tempfile.mkdtemp(prefix="toy-bigbench-")))


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
    if not config.real_bigbench:
        skip = pytest.mark.skip(reason="needs BIG-bench's own task files: bigbench==1.0.0 is not served by the "
                                       "registry; set SLIMTUNE_BIGBENCH_DIR to a BIG-bench checkout's benchmark_tasks")
        for item in items:
            if "real_bigbench" in item.keywords:
                item.add_marker(skip)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
