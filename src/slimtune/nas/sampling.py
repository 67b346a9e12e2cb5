"""NLS training: sample the sub-networks of each optimizer step, outside the forward pass.

A sampler rule maps (space, seed, step) to the list of configurations one optimizer step trains:
  uniform   [one configuration]: each dimension uniformly from its choices (Shears / SQFT / NLS)
  sandwich  [maximal, one uniform configuration, minimal] (EFTNAS, OFA's sandwich rule)
  budgets   [maximal, one of the given target configurations, minimal]: the sandwich rule with the random
            configuration drawn from targets, for a space whose budgets' widths are known (the supernet
            stage passes an EFTNAS space's intermediate budgets). Per-layer uniform choices concentrate
            around the mean width and rarely hit one budget's own widths (bench/RESULTS.md), so the
            sandwich trains its minimal configuration every step and the ones between only by chance;
            this rule trains each intermediate budget's sub-network every few steps.
The configurations of step t come from a generator seeded with (seed, t) alone, so runs are
reproducible, resumed runs continue the same sequence, and all processes of a distributed run train
the same sub-networks.

`ElasticSampler` is a transformers TrainerCallback. Trainer calls `on_step_begin` once per optimizer
step, before the first micro-batch of the step; it activates the step's first configuration, so every
micro-batch of a gradient-accumulation step, and every recomputation under gradient checkpointing,
runs the sub-network whose loss is being optimised (the reference code re-sampled inside forward). A
step with several configurations is trained by the trainer's objective (`train.Objective`), which
activates each in turn on every micro-batch and accumulates their gradients.
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

from torch import nn
from transformers import TrainerCallback

from ..errors import ConfigError
from .elastic import SearchSpace

HISTORY_FILE = "elastic_history.json"


def uniform(space: SearchSpace, seed: int, step: int) -> list[dict[str, int]]:
    """[configuration]: each dimension's choice uniformly at random, from a (seed, step) generator."""
    rng = random.Random(seed * 1_000_003 + step)
    return [{name: rng.choice(d.choices) for name, d in space.dimensions.items()}]


def sandwich(space: SearchSpace, seed: int, step: int) -> list[dict[str, int]]:
    """[maximal, uniform, minimal]: the sandwich rule (the random one is `uniform`'s of the same step)."""
    return [space.maximal(), *uniform(space, seed, step), space.minimal()]


def budgets(space: SearchSpace, seed: int, step: int, targets: list[dict[str, int]]) -> list[dict[str, int]]:
    """[maximal, one of `targets` drawn from a (seed, step) generator, minimal]."""
    rng = random.Random(seed * 1_000_003 + step)
    return [space.maximal(), dict(rng.choice(targets)), space.minimal()]


SAMPLERS = {"uniform": (uniform, 1), "sandwich": (sandwich, 3)}  # rule, configurations per step (any space)
TARGETED_SAMPLERS = {"budgets": (budgets, 3)}  # rules that draw from target configurations
RULES = {**SAMPLERS, **TARGETED_SAMPLERS}


class ElasticSampler(TrainerCallback):
    """Activates the step's configurations; records one history entry per configuration trained:
    {"step", "config", "loss"} (the loss summed over the step's micro-batches, accumulation-scaled)."""

    def __init__(self, model: nn.Module, space: SearchSpace, seed: int = 0, rule: str = "uniform",
                 targets: list[dict[str, int]] | None = None):
        if rule not in RULES:
            raise ConfigError(f"unknown sampling rule {rule!r}; choose from {', '.join(RULES)}")
        if rule in TARGETED_SAMPLERS and not targets:
            raise ConfigError(f"the {rule!r} sampling rule draws from target configurations, and none was given")
        if rule not in TARGETED_SAMPLERS and targets:
            raise ConfigError(f"target configurations are for the {', '.join(TARGETED_SAMPLERS)} rule, not {rule!r}")
        self.model, self.space, self.seed, self.rule = model, space, seed, rule
        self.targets = [space.check(t) for t in targets or []]
        self._rule = partial(RULES[rule][0], targets=self.targets) if targets else RULES[rule][0]
        self.configs_per_step = RULES[rule][1]
        self.history: list[dict] = []
        self._configs: list[dict[str, int]] = []
        self._losses: list[float] = []

    def sample(self, step: int) -> list[dict[str, int]]:
        """The configurations of optimizer step `step` under this sampler's rule."""
        return self._rule(self.space, self.seed, step)

    def step_configurations(self) -> list[dict[str, int]]:
        """The configurations the current step trains (the objective hook asks for them)."""
        return list(self._configs)

    def activate(self, config: dict[str, int]) -> None:
        self.space.apply(self.model, config)

    # ---- Trainer events -----------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        configs = [self.space.check(c) for c in self.sample(state.global_step)]
        self.space.apply(self.model, configs[0])
        self._configs, self._losses = configs, [0.0] * len(configs)

    def add_micro_batch_loss(self, loss: float) -> None:
        """Called by the trainer after each micro-batch with its (accumulation-scaled) loss."""
        if len(self._configs) == 1:
            self._losses[0] += float(loss)

    def add_config_loss(self, index: int, loss: float) -> None:
        """Called by the objective with one configuration's (accumulation-scaled) loss of a micro-batch."""
        if len(self._configs) > 1:
            self._losses[index] += float(loss)

    def on_step_end(self, args, state, control, **kwargs):
        for config, loss in zip(self._configs, self._losses):
            self.history.append({"step": state.global_step, "config": config, "loss": loss})

    def on_train_end(self, args, state, control, **kwargs):
        self.space.apply(self.model, self.space.maximal())  # outside training: the maximal adapter

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, directory: str | Path) -> None:
        (Path(directory) / HISTORY_FILE).write_text(json.dumps(self.history) + "\n")

    def load_checkpoint(self, directory: str | Path) -> None:
        path = Path(directory) / HISTORY_FILE
        self.history = json.loads(path.read_text()) if path.is_file() else []
