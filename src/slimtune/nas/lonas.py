"""LoNAS (Munoz et al. 2024): one super-network whose adapter ranks AND frozen-base widths are elastic,
searched, then extracted into a physically smaller model.

  build_space        the rank dimensions of NLS (nas.space presets) plus width dimensions of the base
                     (width_dimensions, nas.widths): 'mlp' (gate/up outputs + down inputs, with their
                     adapters' B rows / A columns) and 'heads' (whole KV groups: q/o per group, k/v per KV
                     head); decoders (finetuning.py) and encoder classifiers (classify/elastic.py) alike
  MLP_FRACTIONS      the reference preset: 100/87.5/75/62.5/50% of the intermediate size
  head_fractions     the default head preset: every KV-group count from all groups down to half of them
  linear_macs        multiply-accumulates per token of the merged sub-network's linear layers (nas.cost)
  subnetwork files   an extracted sub-adapter of a width configuration carries SUBNETWORK_FILE (its width
                     dimensions and choices); `load_adapted` applies it, `merge` cuts the merged model
                     to it (`shrink_merged`)

Sub-networks keep the first channels / heads; `nas.reorder` can move the most important ones first
before training (the reference keeps the original order).

Bases: dense and sparse float bases are supported. On a sparse base train with `sparse_adapter`
(SparsePEFT): the update is masked by the base's zeros in the width-sliced forward, in the extracted
sub-adapter and in the merge, so every zero of the kept rows / columns is a zero of the smaller model
(tests/nas/test_lonas.py). A quantized (QuantLinear, group-wise INT4) base is refused with a
ConfigError before any training (`check_width_base`, and finetune before it loads the model), and so is
applying or merging a sub-network onto one: output channels could be cut keeping the grid, but input
columns of down / o only at group boundaries, magnitude reordering of those columns would move weights
between groups, and a packed model with per-block widths has no loader. The supported route: train
LoNAS on the float or sparse model, extract and merge the sub-network, then `slimtune quantize` the
smaller model (its own grid), or train a rank-only NLS adapter (no --widths) on the INT4 base.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from ..adapters.base import AdapterLayer
from ..architectures import architecture_of
from ..errors import ArtifactError, ConfigError
from .cost import linear_macs  # noqa: F401 (re-exported: nas.lonas.linear_macs)
from .elastic import SearchSpace
from .space import rank_dimensions
from .widths import MLP_FRACTIONS, head_dimensions, mlp_width_dimensions

WIDTH_KINDS = ("mlp", "heads")
SUBNETWORK_FILE = "subnetwork.json"
SUBNETWORK_VERSION = 1


def head_fractions(model: nn.Module) -> list[float]:
    """Every KV-group count from all groups down to half of them (at least one), as fractions."""
    arch = architecture_of(model)
    if arch is None:
        raise ConfigError(f"{type(model).__name__} has no entry in slimtune's architecture map; elastic heads need it")
    _, n_kv, _ = arch.heads(model.config)
    return [k / n_kv for k in range(n_kv, max(1, math.ceil(n_kv / 2)) - 1, -1)]


def quantized_base_error(what: str, float_model: str | None = None) -> ConfigError:
    """The refusal of a quantized base for elastic widths, with the way round it (module docstring)."""
    source = f" (it was quantized from {float_model})" if float_model else ""
    return ConfigError(f"elastic widths (LoNAS) need a float base, dense or sparse, and {what} is quantized{source}: "
                       "slimtune does not slice group-quantized (INT4) layers, whose input columns could only be cut "
                       "at group boundaries. Train --widths on the float or sparse model, extract and merge the "
                       "sub-network, then `slimtune quantize` the smaller model; or drop --widths to train a "
                       "rank-only NLS adapter on the quantized base")


def check_width_base(model: nn.Module, modules) -> None:
    """Width elasticity slices float weights; a quantized layer is refused with the reason."""
    for name in modules:
        module = model.get_submodule(name)
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        if type(base).__name__ == "QuantLinear":
            raise quantized_base_error(name)


def width_dimensions(model: nn.Module, widths, mlp_fractions=None, heads_fractions=None):
    """The width dimensions of the requested kinds ('mlp', 'heads')."""
    unknown = [w for w in widths if w not in WIDTH_KINDS]
    if unknown:
        raise ConfigError(f"unknown width kind(s) {unknown}; choose from {', '.join(WIDTH_KINDS)}")
    check_width_base(model, [n for n, m in model.named_modules() if type(m).__name__ == "QuantLinear"])
    dims = []
    if "mlp" in widths:
        dims += mlp_width_dimensions(model, tuple(mlp_fractions or MLP_FRACTIONS))
    if "heads" in widths:
        dims += head_dimensions(model, tuple(heads_fractions or head_fractions(model)))
    dims = [d for d in dims if len(d.choices) > 1]  # a single choice is not elastic
    if not dims:
        raise ConfigError(f"the width fractions leave no elastic width in {list(widths)} (every dimension has one "
                          "choice); give fractions that differ by at least one channel / KV group")
    check_width_base(model, {b.module for d in dims for b in d.bindings})
    return dims


def build_space(model: nn.Module, names: list[str], rank_space: list[int], groups: str,
                width_dims=None) -> SearchSpace:
    """The super-network's space: NLS rank groups over the adapted `names` (preset `groups`), plus the width
    dimensions `width_dims` (width_dimensions; the preset is then 'lonas')."""
    from .space import ElasticSpace

    dims = rank_dimensions(names, rank_space, groups, architecture_of(model))
    return ElasticSpace([*dims, *(width_dims or [])], "lonas" if width_dims else groups)


def training_metrics(model: nn.Module, space: SearchSpace, history: list[dict]) -> dict:
    """What finetune records of a trained super-network: its dimensions, the sampled configurations and
    the parameters of its maximal / minimal sub-networks."""
    from .space import frequencies

    return dict(rank_groups=len(space.of_kind("rank")), width_dimensions=len(space.of_kind("width")),
                sampled_steps=len(history), maximal_parameters=space.size(model, space.maximal()),
                minimal_parameters=space.size(model, space.minimal()),
                rank_frequencies={g: {str(r): n for r, n in f.items()} for g, f in frequencies(history).items()})


def width_space(space: SearchSpace) -> SearchSpace | None:
    """The width dimensions of a space alone (None when it has none)."""
    dims = list(space.of_kind("width").values())
    return SearchSpace(dims, space.preset) if dims else None


# ---- extracted sub-networks ------------------------------------------------------------------

def save_subnetwork(directory: str | Path, space: SearchSpace, config: dict[str, int]) -> dict | None:
    """Record a configuration's widths beside an extracted sub-adapter (nothing for a rank-only space)."""
    widths = width_space(space)
    if widths is None:
        return None
    chosen = {n: config[n] for n in widths.dimensions}
    data = {"version": SUBNETWORK_VERSION, "space": widths.to_dict(), "config": chosen}
    (Path(directory) / SUBNETWORK_FILE).write_text(json.dumps(data, indent=1) + "\n")
    return chosen


def load_subnetwork(directory: str | Path) -> tuple[SearchSpace, dict[str, int]] | None:
    path = Path(directory) / SUBNETWORK_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") != SUBNETWORK_VERSION:
            raise ArtifactError(f"{path}: sub-network version {data.get('version')!r} is not one this slimtune reads")
        space = SearchSpace.from_dict(data["space"])
        return space, space.check(data["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path} is not a valid sub-network description ({e})") from e


def apply_subnetwork(model: nn.Module, directory: str | Path) -> bool:
    """Activate an extracted sub-adapter's widths on its (full-width) base; False if it has none."""
    found = load_subnetwork(directory)
    if found is None:
        return False
    space, config = found
    check_width_base(model, {b.module for d in space.dimensions.values() for b in d.bindings if b.axis != "rank"})
    space.apply(model, config)
    return True


def shrink_merged(model: nn.Module, directory: str | Path) -> tuple[nn.Module, dict | None, dict | None]:
    """After merging an extracted sub-adapter: the physically smaller model its widths select, the per-module
    shapes to record and the query heads each attention keeps (widths_io.write_widths), both None when
    the config describes the model, so stock transformers loads it (nas.elastic_model.extract_model:
    widths that differ between blocks, or fewer heads in a family whose config derives the head size)."""
    from .elastic_model import extract_model, kept_heads

    found = load_subnetwork(directory)
    if found is None:
        return model, None, None
    space, config = found
    check_width_base(model, {b.module for d in space.dimensions.values() for b in d.bindings})
    small, shapes = extract_model(model, space, config)
    return small, shapes, kept_heads(model, space, config) if shapes else None


def subnetwork_files(directory: str | Path, super_adapter: str | Path, model: nn.Module, space: SearchSpace,
                     config: dict[str, int]) -> dict:
    """extract's LoNAS part: the configuration's widths (SUBNETWORK_FILE) and the base's channel order
    (nas.reorder) beside the sub-adapter; returns the metrics to record (nothing for a rank-only space)."""
    from .reorder import copy_order

    copy_order(super_adapter, directory)
    widths = save_subnetwork(directory, space, config)
    if widths is None:
        return {}
    return {"widths": widths, "total_parameters": space.size(model, config),
            "maximal_total_parameters": space.size(model, space.maximal()),
            "macs_per_token": linear_macs(model, space, config),
            "maximal_macs_per_token": linear_macs(model, space, space.maximal())}
