"""NLS training: sample one sub-adapter per optimizer step, outside the forward pass.

`ElasticSampler` is a transformers TrainerCallback. Trainer calls `on_step_begin` once per optimizer
step, before the first micro-batch of the step, so every micro-batch of a gradient-accumulation
step, and every recomputation under gradient checkpointing, runs the sub-adapter whose loss is
being optimised (the reference code re-sampled inside forward, which trains a different
sub-adapter than the one that produced the loss). The configuration of step t is drawn from a
generator seeded with (seed, t) alone, so runs are reproducible, resumed runs continue the same
sequence, and all processes of a distributed run train the same sub-adapter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from torch import nn
from transformers import TrainerCallback

from .space import ElasticSpace

HISTORY_FILE = "elastic_history.json"


class ElasticSampler(TrainerCallback):
    def __init__(self, model: nn.Module, space: ElasticSpace, seed: int = 0):
        self.model, self.space, self.seed = model, space, seed
        self.history: list[dict] = []  # one entry per optimizer step: {"step", "config", "loss"}
        self._config: dict[str, int] | None = None
        self._loss = 0.0

    def sample(self, step: int) -> dict[str, int]:
        """Each group's rank uniformly from its space (no sandwich rule), from a (seed, step) generator."""
        rng = random.Random(self.seed * 1_000_003 + step)
        return {g: rng.choice(grp.space) for g, grp in self.space.groups.items()}

    # ---- Trainer events -----------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        self._config = self.space.apply(self.model, self.sample(state.global_step))
        self._loss = 0.0

    def add_micro_batch_loss(self, loss: float) -> None:
        """Called by the trainer after each micro-batch with its (accumulation-scaled) loss."""
        self._loss += float(loss)

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append({"step": state.global_step, "config": self._config, "loss": self._loss})

    def on_train_end(self, args, state, control, **kwargs):
        self.space.apply(self.model, self.space.maximal())  # outside training: the maximal adapter

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, directory: str | Path) -> None:
        (Path(directory) / HISTORY_FILE).write_text(json.dumps(self.history) + "\n")

    def load_checkpoint(self, directory: str | Path) -> None:
        path = Path(directory) / HISTORY_FILE
        self.history = json.loads(path.read_text()) if path.is_file() else []
