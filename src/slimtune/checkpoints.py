"""Training checkpoints that resume only when complete and only for the same configuration.

transformers' Trainer writes `checkpoint-N/` file by file, so a kill leaves a partial directory that
its own `get_last_checkpoint` would pick. slimtune marks a checkpoint complete by writing MARKER
last (atomically, before older checkpoints are rotated away); the marker carries the fingerprint of
the run's configuration (training settings, adapter layout, training data, base model) and the sum
of the training losses so far, so that the loss reported after a resume covers the whole run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .artifacts import check_safetensors, write_json_atomic
from .errors import ArtifactError, ConfigError

MARKER = "slimtune_checkpoint.json"
TRAINABLE_FILE = "trainable.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Settings that do not change what training computes: a run may resume under other values.
_NEUTRAL = ("logging_steps", "save_steps", "save_total_limit")


def run_fingerprint(model, items, config, run_key: dict | None = None) -> str:
    """A hash of everything a resumed run must share with the run that wrote the checkpoints."""
    layers = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_alpha"):
            layers[name] = {k: getattr(module, k, None) for k in ("r", "lora_alpha", "dropout", "rank_space",
                                                                  "sparse", "quant_aware")}
            layers[name]["qa_float"] = getattr(module, "qa_weight", None) is not None
    data = hashlib.sha256(json.dumps([[it["input_ids"], it["labels"]] for it in items]).encode()).hexdigest()
    payload = {
        "train": {k: v for k, v in config.model_dump().items() if k not in _NEUTRAL},
        "trainable": sorted((n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad),
        "layers": layers, "data": data, "run": run_key or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_marker(checkpoint: str | os.PathLike, fingerprint: str, step: int, loss_sum: float) -> None:
    write_json_atomic(Path(checkpoint) / MARKER, {"fingerprint": fingerprint, "step": step, "loss_sum": loss_sum})


def read_marker(checkpoint: str | os.PathLike) -> dict | None:
    """The marker of a complete checkpoint (its files present and whole), else None."""
    checkpoint = Path(checkpoint)
    try:
        marker = json.loads((checkpoint / MARKER).read_text())
        json.loads((checkpoint / "trainer_state.json").read_text())
        check_safetensors(checkpoint / TRAINABLE_FILE)
    except (OSError, ValueError, ArtifactError):
        return None
    return marker if isinstance(marker, dict) and "fingerprint" in marker else None


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def resume_point(directory: str | os.PathLike, fingerprint: str, fresh: bool = False,
                 main_process: bool = True) -> str | None:
    """The newest complete checkpoint of this configuration in `directory`, or None to start at step 0.

    Incomplete checkpoints (killed while written) are removed. Complete ones of another configuration stop the
    run with a ConfigError, unless `fresh`: then they are removed and training starts afresh. Only the main
    process removes anything; every process reaches the same answer.
    """
    import shutil

    directory = Path(directory)
    complete, foreign = [], []
    for step, path in _checkpoints(directory):
        marker = read_marker(path)
        if marker is None:
            if main_process:
                shutil.rmtree(path, ignore_errors=True)
        elif marker["fingerprint"] == fingerprint:
            complete.append(path)
        else:
            foreign.append(path)
    if foreign and not fresh:
        raise ConfigError(f"the checkpoints in {directory} ({', '.join(p.name for p in foreign)}) were written by "
                          "another configuration (another task, model, adapter or training setting); re-run the "
                          "command that wrote them to resume it, or pass --overwrite to start afresh (which "
                          "removes them)")
    if main_process:
        for path in foreign:
            shutil.rmtree(path, ignore_errors=True)
    return str(complete[-1]) if complete else None
