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


@pytest.fixture(scope="session")
def int4_lora(tiny_path):
    """The tiny Llama with RTN INT4 linears (QuantLinear) under LoRA adapters with non-zero B."""
    import torch

    from slimtune.adapters.lora import LoraLinear, add_lora
    from slimtune.models import load_model, target_modules
    from slimtune.quant import QuantLinear, quantize_model

    model, tok = load_model(tiny_path)
    quantize_model(model, tok, "rtn", 4, 32, True, progress=False)
    for layer in add_lora(model, target_modules(model), r=4, seed=0).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(layer, LoraLinear) and isinstance(layer.base_layer, QuantLinear)
    return model.eval(), tok
