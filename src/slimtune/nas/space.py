"""Rank dimensions from presets: groups of LoRA modules that share one rank.

A group is a rank `Dimension` (nas.elastic): a name, a descending rank space (the first rank is the
maximal one) and its modules' rank axes. Presets group the adapted modules of each transformer block:
  shears  Shears' grouping: [q, k, v], [gate, up], [down]; any other module alone
  block   NNCF's: one rank for all adapted modules of a block
  module  every module alone
Group names are '<block prefix>:<kind>', e.g. 'model.layers.3:qkv'.
"""

from __future__ import annotations

from ..adapters.lora import check_rank_space
from ..adapters.peft_io import ELASTIC_CONFIG  # noqa: F401 (re-exported)
from ..architectures import Architecture, split_block
from ..errors import ConfigError
from .elastic import ELASTIC_VERSION, Binding, Dimension, SearchSpace  # noqa: F401 (ELASTIC_VERSION re-exported)

PRESETS = ("shears", "block", "module")

def group_name(module: str, preset: str, arch: Architecture | None = None) -> str:
    """The module's group under a preset; Shears' groups come from the architecture map's roles
    (a family slimtune has no map for gets one group per module)."""
    block, rest = split_block(module)
    if preset == "module" or not block:
        return module
    if preset == "block":
        return block
    return f"{block}:{arch.group_kind(rest) if arch else rest.rsplit('.', 1)[-1]}"


def rank_dimensions(modules: list[str], rank_space: list[int], preset: str = "shears",
                    arch: Architecture | None = None) -> list[Dimension]:
    """One rank dimension per group of the preset, each over `rank_space`, binding its modules' rank axes."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown rank-group preset {preset!r}; choose from {', '.join(PRESETS)}")
    space = check_rank_space(rank_space)
    groups: dict[str, list[str]] = {}
    for module in modules:
        groups.setdefault(group_name(module, preset, arch), []).append(module)
    return [Dimension(g, list(space), [Binding(m, "rank") for m in ms]) for g, ms in groups.items()]


class ElasticSpace(SearchSpace):
    """A search space built from a rank-group preset (what `finetune --adapter nls` trains); any
    SearchSpace method applies, and width dimensions can be added (`space + mlp_width_dimensions(...)`)."""

    @classmethod
    def build(cls, modules: list[str], rank_space: list[int], preset: str = "shears",
              arch: Architecture | None = None) -> "ElasticSpace":
        return cls(rank_dimensions(modules, rank_space, preset, arch), preset)


RankGroup = Dimension  # the old name of a rank dimension (its .space and .modules still read)


def frequencies(history: list[dict]) -> dict[str, dict[int, int]]:
    """How often each rank was active per group over a training history [{config, loss}, ...]."""
    out: dict[str, dict[int, int]] = {}
    for entry in history:
        for g, r in entry["config"].items():
            out.setdefault(g, {}).setdefault(int(r), 0)
            out[g][int(r)] += 1
    return out
