"""Multi-process (DDP over gloo) fine-tuning on CPU: `torchrun -m slimtune.cli finetune` with two processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from slimtune.api import load_adapted
from slimtune.models import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_nls_finetune(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "super"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # torchrun sets its own
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()),
           "-m", "slimtune.cli", "finetune", "--model", str(tiny_llama_dir), "--task", "polarity",
           "--adapter", "nls", "--rank-space", "4,3,2", "--groups", "block", "--max-steps", "4",
           "--batch-size", "4", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name in ("adapter_config.json", "adapter_model.safetensors", "elastic_config.json",
                 "elastic_history.json", "slimtune.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "elastic_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    metrics = json.loads((out / "slimtune.json").read_text())["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    # Only rank 0 wrote: no temporary, replaced or checkpoint directories are left beside the artifact.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    net, _ = load_adapted(tiny_llama_dir, out)
    net.eval()  # load_adapted leaves the new LoRA layers in training mode (dropout 0.05 would stay on)
    base, _ = load_model(tiny_llama_dir)
    peft_net = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.randint(0, net.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_net(input_ids=ids).logits, net(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_writes_the_artifact(tiny_llama_dir, tmp_path, monkeypatch, rank):
    """In-process stand-in for a 2-process group: rank 1 writes nothing and waits; both meet at one barrier."""
    import torch.distributed as dist

    from slimtune import api

    barriers = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: rank)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    checkpoints = tmp_path / ".ad.checkpoints"

    def fake_train(net, tokenizer, examples, config, checkpoint_dir, **kwargs):
        checkpoint_dir.mkdir()
        return {"train_loss": 0.0, "steps": 0, "world_size": 2}

    monkeypatch.setattr("slimtune.finetuning.train", fake_train)
    out = api.finetune(tiny_llama_dir, task="polarity", out=tmp_path / "ad", rank=2, progress=False)
    assert out == tmp_path / "ad" and barriers == [1]
    assert (out / "slimtune.json").is_file() == (rank == 0)
    assert checkpoints.is_dir() == (rank == 1)  # rank 0 removes the checkpoints once the artifact is in place
