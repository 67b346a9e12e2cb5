"""First-order importance of attention heads and FFN neurons (EFTNAS stage 1, movement-pruning style).

A structure is one unit of a width dimension (`nas.widths`): a head (a KV group where heads share keys
and values: its q rows, k/v rows and o columns) or an FFN neuron (its gate/up rows and down column).
Its score is −Σ W·∂L/∂W over the structure's weights (and the biases of the rows it owns), summed
over every optimizer step it is collected on: positive where the training loss pushes the weights
away from zero, i.e. where they matter. Collected either

  during fine-tuning  `ImportanceCallback` (a TrainerCallback) reads the accumulated gradients before
                      each optimizer step (full fine-tuning: the weights themselves are trained), or
  by passes           `collect_importance(model, batches)`: forward/backward over batches with the
                      structures' weights requiring gradients and nothing updated (any model: a merged
                      LoRA fine-tune, a decoder, a saved teacher).

Scores live in `Importance` ({dimension: tensor of per-unit scores}), saved as importance.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import ArtifactError, ConfigError
from .elastic import Dimension, SearchSpace
from .widths import head_dimensions, mlp_width_dimensions

IMPORTANCE_FILE = "importance.json"
IMPORTANCE_VERSION = 1


def structure_dimensions(model: nn.Module, heads: bool = True, mlp: bool = True) -> list[Dimension]:
    """The model's head and MLP-width dimensions at full width only (one choice each: the unit count)."""
    dims = head_dimensions(model, fractions=(1.0,)) if heads else []
    return dims + (mlp_width_dimensions(model, fractions=(1.0,)) if mlp else [])


def dimension_kind(dim: Dimension) -> str:
    return dim.name.rsplit(":", 1)[-1]


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    if type(module) is not nn.Linear:
        raise ConfigError(f"{name} is a {type(module).__name__}; importance and reordering need plain linear layers "
                          "(merge adapters into the weights first)")
    return module


def _unit_sums(values: torch.Tensor, axis: str, unit: int, n: int) -> torch.Tensor:
    """Per-unit sums of an (out, in) matrix (or an (out,) bias) along a bound axis."""
    if values.dim() == 1:
        return values.reshape(n, unit).sum(-1)
    if axis == "out":
        return values.reshape(n, unit, -1).sum((1, 2))
    return values.reshape(values.shape[0], n, unit).sum((0, 2))


@dataclass
class Importance:
    """Per-unit scores per dimension name; `steps` counts the gradients summed in."""

    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    source: str = ""

    def to_dict(self) -> dict:
        return {"version": IMPORTANCE_VERSION, "score": "-sum(W * dL/dW)", "source": self.source, "steps": self.steps,
                "dimensions": {n: {"kind": self.kinds.get(n, n.rsplit(":", 1)[-1]), "scores": s.tolist()}
                               for n, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Importance":
        if data.get("version") != IMPORTANCE_VERSION or "dimensions" not in data:
            raise ArtifactError(f"not an importance file of version {IMPORTANCE_VERSION}")
        dims = data["dimensions"]
        return cls({n: torch.tensor(d["scores"], dtype=torch.float64) for n, d in dims.items()},
                   {n: d["kind"] for n, d in dims.items()}, int(data.get("steps", 0)), data.get("source", ""))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / IMPORTANCE_FILE
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Importance":
        path = Path(path)
        path = path / IMPORTANCE_FILE if path.is_dir() else path
        if not path.is_file():
            raise ArtifactError(f"{path} not found: no importance scores (finetune with importance, or run "
                                "`slimtune importance`)")
        return cls.from_dict(json.loads(path.read_text()))

    def check(self, dims: list[Dimension]) -> None:
        """The scores must describe these dimensions (same names and unit counts)."""
        for d in dims:
            s = self.scores.get(d.name)
            if s is None or len(s) != d.choices[0]:
                raise ConfigError(f"importance scores do not match the model: dimension {d.name} has {d.choices[0]} "
                                  f"units, the scores {None if s is None else len(s)}")


class ImportanceAccumulator:
    """Adds −W·∂L/∂W per unit from the gradients currently held by the bound weights."""

    def __init__(self, model: nn.Module, dims: list[Dimension] | None = None, source: str = ""):
        self.dims = dims if dims is not None else structure_dimensions(model)
        self.importance = Importance({d.name: torch.zeros(d.choices[0], dtype=torch.float64) for d in self.dims},
                                     {d.name: dimension_kind(d) for d in self.dims}, 0, source)
        for d in self.dims:
            for b in d.bindings:
                _linear(model, b.module)

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        out = []
        for d in self.dims:
            for b in d.bindings:
                m = model.get_submodule(b.module)
                out += [m.weight] + ([m.bias] if m.bias is not None and b.axis == "out" else [])
        return out

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        for d in self.dims:
            n, total = d.choices[0], self.importance.scores[d.name]
            for b in d.bindings:
                m = model.get_submodule(b.module)
                tensors = [m.weight] + ([m.bias] if m.bias is not None and b.axis == "out" else [])
                for p in tensors:
                    if p.grad is not None:
                        total -= _unit_sums((p.detach() * p.grad).double(), b.axis, b.unit, n).cpu()
        self.importance.steps += 1


class ImportanceCallback(TrainerCallback):
    """Collects importance during training, once per optimizer step, before the optimizer (gradients of
    the whole accumulated step)."""

    def __init__(self, model: nn.Module, source: str = "finetune"):
        self.model = model
        self.accumulator = ImportanceAccumulator(model, source=source)

    @property
    def importance(self) -> Importance:
        return self.accumulator.importance

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.accumulator.accumulate(self.model)

    # the sum so far rides in the trainer's checkpoints, so a resumed run keeps it
    def save_checkpoint(self, directory: str | Path) -> None:
        self.importance.save(directory)

    def load_checkpoint(self, directory: str | Path) -> None:
        if (Path(directory) / IMPORTANCE_FILE).is_file():
            saved = Importance.load(directory)
            self.importance.scores, self.importance.steps = saved.scores, saved.steps


def collect_importance(model: nn.Module, batches, source: str = "passes") -> Importance:
    """Importance from forward/backward passes over `batches` (dicts with labels; the model returns .loss):
    one accumulation per batch, nothing updated; the model's requires_grad flags are restored."""
    acc = ImportanceAccumulator(model, source=source)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in acc.parameters(model)}
    was_training = model.training
    model.eval()  # no dropout: the scores of the model as it is
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        for batch in batches:
            model(**batch).loss.backward()
            acc.accumulate(model)
            for p in model.parameters():
                p.grad = None
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    if acc.importance.steps == 0:
        raise ConfigError("no batches to collect importance on")
    return acc.importance


def space_from_widths(model: nn.Module, space: dict[str, list[int]]) -> SearchSpace:
    """A SearchSpace over the model's head / MLP dimensions with the given descending choices per dimension."""
    dims = {d.name: d for d in structure_dimensions(model)}
    unknown = sorted(set(space) - set(dims))
    if unknown:
        raise ConfigError(f"unknown width dimensions {unknown[:3]}; the model has {sorted(dims)[:4]} ...")
    return SearchSpace([Dimension(n, list(space[n]), dims[n].bindings) for n in dims if n in space])

