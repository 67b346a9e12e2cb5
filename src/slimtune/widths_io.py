"""A model whose linear layers differ in width between blocks (a LoNAS sub-network with per-block MLP
or head widths, an EFTNAS sub-network), which no stock config describes: the merge / extract stages
write the odd layers' shapes into WIDTHS_FILE beside the weights, and `load_model` builds the model
from its config, gives those layers their recorded shapes, then loads the weights.

Attention with fewer heads: Llama-like configs carry head_dim, and their attention reads the head count
from the projections. BERT-like configs derive the head size from hidden / num_attention_heads, so a
sub-network with fewer heads keeps the full head count in its config (the head size stays right) and
its query/key/value/output projections take their recorded, narrower shapes; BERT's attention reshapes
to (-1, head size), so the heads a layer keeps follow from its projections. `heads` (query projection ->
heads kept) is recorded with them and checked on loading against the config's head size.
A skipped sub-block (EFTNAS `space --skip`) is a zero-size shape ([0, hidden] / [hidden, 0]); its attention
gets `skipping.make_skippable`'s forward.
A leaf: torch, safetensors and transformers (and skipping.py, for skipped attention) only."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

WIDTHS_FILE = "slimtune_widths.json"
WIDTHS_VERSION = 1


def write_widths(directory: str | Path, shapes: dict[str, list[int]], heads: dict[str, int] | None = None) -> None:
    """Record {module: [out, in]} of the layers whose widths the config does not give, and optionally
    {query projection: heads kept} (module docstring)."""
    data = {"version": WIDTHS_VERSION, "shapes": {k: [int(o), int(i)] for k, (o, i) in shapes.items()}}
    if heads:
        data["heads"] = {k: int(n) for k, n in heads.items()}
    (Path(directory) / WIDTHS_FILE).write_text(json.dumps(data, indent=1) + "\n")


def copy_widths(source, target: str | Path) -> bool:
    """Copy the widths file of a model directory `source` (if any) into `target`, e.g. beside a fine-tuned copy
    of an extracted sub-network (same shapes); returns whether there was one."""
    path = Path(str(source)) / WIDTHS_FILE
    if not path.is_file():
        return False
    (Path(target) / WIDTHS_FILE).write_text(path.read_text())
    return True


def _read(directory: str | Path) -> dict | None:
    path = Path(directory) / WIDTHS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("version") != WIDTHS_VERSION:
        raise ValueError(f"{path}: version {data.get('version')!r} of the per-module widths is not one this "
                         "slimtune reads")
    return data


def read_widths(directory: str | Path) -> dict[str, list[int]] | None:
    data = _read(directory)
    return None if data is None else data["shapes"]


def read_heads(directory: str | Path) -> dict[str, int]:
    data = _read(directory)
    return dict((data or {}).get("heads") or {})


def check_heads(config, shapes: dict[str, list[int]], heads: dict[str, int]) -> None:
    """Each recorded query projection holds whole heads of the config's head size, as many as recorded."""
    n = getattr(config, "num_attention_heads", None)
    size = getattr(config, "head_dim", None) or (config.hidden_size // n if n else None)
    for module, kept in heads.items():
        out = shapes.get(module, [None])[0]
        if size is None or out is None or out != kept * size:
            raise ValueError(f"{module}: the recorded {kept} heads do not fit its {out} outputs at the config's head "
                             f"size {size} (hidden {getattr(config, 'hidden_size', None)} / {n} heads); the "
                             f"per-module widths file does not belong to this config")


def load_with_widths(cls, source: str | Path, config, dtype: torch.dtype, shapes: dict[str, list[int]]):
    """The model of `config` with the recorded layer shapes, its weights read from `source`."""
    from safetensors.torch import load_file

    check_heads(config, shapes, read_heads(source))
    model = cls.from_config(config, dtype=dtype)
    for name, (o, i) in shapes.items():
        old = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        with warnings.catch_warnings():  # a zero-size layer's initialisation is a no-op (its weights load next)
            warnings.simplefilter("ignore", UserWarning)
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
    if any(0 in shape for shape in shapes.values()):  # a skipped sub-block: attention without heads skips cleanly
        from .skipping import make_skippable

        make_skippable(model)
    return model
