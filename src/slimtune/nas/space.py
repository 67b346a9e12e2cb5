"""The search space of an elastic super-adapter: groups of LoRA modules that share one rank.

A group has a name, its modules and a descending rank space (the first rank is the maximal one).
Presets group the adapted modules of each transformer block:
  shears  Shears' grouping: [q, k, v], [gate, up], [down]; any other module alone
  block   NNCF's: one rank for all adapted modules of a block
  module  every module alone
Group names are '<block prefix>:<kind>', e.g. 'model.layers.3:qkv'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..architectures import Architecture, split_block
from ..adapters.lora import check_rank_space, lora_layers
from ..adapters.peft_io import ELASTIC_CONFIG
from ..errors import ArtifactError, ConfigError

PRESETS = ("shears", "block", "module")
ELASTIC_VERSION = 1  # of elastic_config.json

def group_name(module: str, preset: str, arch: Architecture | None = None) -> str:
    """The module's group under a preset; Shears' groups come from the architecture map's roles
    (a family slimtune has no map for gets one group per module)."""
    block, rest = split_block(module)
    if preset == "module" or not block:
        return module
    if preset == "block":
        return block
    return f"{block}:{arch.group_kind(rest) if arch else rest.rsplit('.', 1)[-1]}"


@dataclass
class RankGroup:
    modules: list[str]
    space: list[int]


class ElasticSpace:
    """Groups of modules that share a rank; a configuration maps each group to a rank in its space."""

    def __init__(self, groups: dict[str, RankGroup], preset: str | None = None):
        if not groups:
            raise ConfigError("an elastic space needs at least one group")
        self.groups, self.preset = groups, preset

    @classmethod
    def build(cls, modules: list[str], rank_space: list[int], preset: str = "shears",
              arch: Architecture | None = None) -> "ElasticSpace":
        if preset not in PRESETS:
            raise ConfigError(f"unknown rank-group preset {preset!r}; choose from {', '.join(PRESETS)}")
        space = check_rank_space(rank_space)
        groups: dict[str, RankGroup] = {}
        for module in modules:
            groups.setdefault(group_name(module, preset, arch), RankGroup([], list(space))).modules.append(module)
        return cls(groups, preset)

    # ---- configurations ---------------------------------------------------------------
    def maximal(self) -> dict[str, int]:
        return {g: grp.space[0] for g, grp in self.groups.items()}

    def minimal(self) -> dict[str, int]:
        return {g: grp.space[-1] for g, grp in self.groups.items()}

    def median(self) -> dict[str, int]:
        """Shears' heuristic: space[(len - 1) // 2] of each descending space ([32, 24, 16] -> 24)."""
        return {g: grp.space[(len(grp.space) - 1) // 2] for g, grp in self.groups.items()}

    def check(self, config: dict[str, int]) -> dict[str, int]:
        """Validate a full or partial configuration; missing groups take their maximal rank."""
        unknown = sorted(set(config) - set(self.groups))
        if unknown:
            raise ConfigError(f"unknown rank group(s) {unknown[:5]}; this space's groups are e.g. {list(self.groups)[:4]}")
        for g, r in config.items():
            if r not in self.groups[g].space:
                raise ConfigError(f"rank {r!r} for group {g} is outside its space {self.groups[g].space}")
        return {**self.maximal(), **{g: int(r) for g, r in config.items()}}

    def module_ranks(self, config: dict[str, int]) -> dict[str, int]:
        config = self.check(config)
        return {m: config[g] for g, grp in self.groups.items() for m in grp.modules}

    def size(self, config: dict[str, int], widths: dict[str, tuple[int, int]]) -> int:
        """Adapter parameters of a configuration: r·(in + out) per module; widths maps module -> (in, out)."""
        return sum(r * sum(widths[m]) for m, r in self.module_ranks(config).items())

    # ---- the model --------------------------------------------------------------------
    def apply(self, model: nn.Module, config: dict[str, int]) -> dict[str, int]:
        """Set every elastic layer's active rank; returns the full configuration."""
        config = self.check(config)
        layers = lora_layers(model)
        ranks = self.module_ranks(config)
        missing = sorted(set(ranks) - set(layers))
        if missing:
            raise ConfigError(f"the model has no LoRA layer for module(s) {missing[:3]} of the elastic space")
        for name, r in ranks.items():
            layers[name].active_rank = r
        return config

    def bind(self, model: nn.Module) -> None:
        """Give every elastic layer its group's rank space (after loading a super-adapter)."""
        layers = lora_layers(model)
        for group in self.groups.values():
            for name in group.modules:
                layers[name].rank_space = check_rank_space(group.space, layers[name].r)

    # ---- files --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": ELASTIC_VERSION, "preset": self.preset,
                "groups": {g: {"modules": grp.modules, "space": grp.space} for g, grp in self.groups.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "ElasticSpace":
        version = data.get("version", 1)  # files written before the version field are version 1
        if version != ELASTIC_VERSION:
            raise ArtifactError(f"elastic configuration version {version!r} is not one this slimtune reads "
                                f"(version {ELASTIC_VERSION}); upgrade slimtune or re-train the super-adapter")
        groups = {g: RankGroup(list(v["modules"]), check_rank_space(v["space"])) for g, v in data["groups"].items()}
        return cls(groups, data.get("preset"))

    def save(self, directory: str | Path) -> None:
        (Path(directory) / ELASTIC_CONFIG).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "ElasticSpace":
        path = Path(directory) / ELASTIC_CONFIG
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an elastic super-adapter (no {ELASTIC_CONFIG}); "
                                "train one with `slimtune finetune --adapter nls`")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path} is not a valid elastic configuration ({e})") from e


def frequencies(history: list[dict]) -> dict[str, dict[int, int]]:
    """How often each rank was active per group over a training history [{config, loss}, ...]."""
    out: dict[str, dict[int, int]] = {}
    for entry in history:
        for g, r in entry["config"].items():
            out.setdefault(g, {}).setdefault(int(r), 0)
            out[g][int(r)] += 1
    return out
