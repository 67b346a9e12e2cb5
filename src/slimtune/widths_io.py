"""A model whose linear layers differ in width between blocks (a LoNAS sub-network with per-block MLP
or head widths), which no stock config describes: the merge writes the odd layers' shapes into
WIDTHS_FILE beside the weights, and `load_model` builds the model from its config, gives those layers
their recorded shapes, then loads the weights. A leaf: torch, safetensors and transformers only."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WIDTHS_FILE = "slimtune_widths.json"
WIDTHS_VERSION = 1


def write_widths(directory: str | Path, shapes: dict[str, list[int]]) -> None:
    """Record {module: [out, in]} of the layers whose widths the config does not give."""
    data = {"version": WIDTHS_VERSION, "shapes": {k: [int(o), int(i)] for k, (o, i) in shapes.items()}}
    (Path(directory) / WIDTHS_FILE).write_text(json.dumps(data, indent=1) + "\n")


def read_widths(directory: str | Path) -> dict[str, list[int]] | None:
    path = Path(directory) / WIDTHS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("version") != WIDTHS_VERSION:
        raise ValueError(f"{path}: version {data.get('version')!r} of the per-module widths is not one this "
                         "slimtune reads")
    return data["shapes"]


def load_with_widths(cls, source: str | Path, config, dtype: torch.dtype, shapes: dict[str, list[int]]):
    """The model of `config` with the recorded layer shapes, its weights read from `source`."""
    from safetensors.torch import load_file

    model = cls.from_config(config, dtype=dtype)
    for name, (o, i) in shapes.items():
        old = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        new = nn.Linear(int(i), int(o), bias=old.bias is not None, dtype=old.weight.dtype)
        setattr(model.get_submodule(parent) if parent else model, child, new)
    state = {}
    for f in sorted(Path(source).glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"the weights do not fit the recorded widths (missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model
