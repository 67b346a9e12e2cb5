import os
import shutil

import pytest

# lm-eval and the hub libraries must never reach the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    from slimtune.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_path):
    from slimtune.models import load_model

    return load_model(tiny_path)


@pytest.fixture(scope="session")
def tiny_bos_path(tiny_path, tmp_path_factory):
    """The tiny model with a tokenizer that prepends BOS (like Llama-2's), to check BOS handling."""
    from tokenizers import Tokenizer, processors

    out = tmp_path_factory.mktemp("tiny_bos") / "model"
    shutil.copytree(tiny_path, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="session")
def tiny_bos(tiny_bos_path):
    from slimtune.models import load_model

    return load_model(tiny_bos_path)


@pytest.fixture(scope="session")
def news():
    from slimtune.data import load_text

    return load_text("news")[:12000]
