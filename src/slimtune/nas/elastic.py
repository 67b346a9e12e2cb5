"""Elastic dimensions and the search space they span.

A `Dimension` has a name, descending choices (the first is the maximal one) and bindings; a `Binding`
names a module, one of its axes and a unit: choosing c for the dimension makes the module use the
first c·unit entries of that axis.

  rank   a LoRA layer's active rank (elastic LoRA / NLS); unit 1
  out    the base's output channels, and with them the rows of the adapter's B
  in     the base's input columns, and with them the columns of the adapter's A

An MLP width binds gate/up 'out' and down 'in' (unit 1: channels); an attention width binds q 'out'
and o 'in' (unit: heads per KV group × head dim) and k/v 'out' (unit: head dim), so the choice counts
KV groups and heads always go in whole KV groups (`nas.widths` builds both from the architecture map).
Widths are real slices: the sub-network computes exactly what a physically smaller model computes
(`nas.subnetwork.extract_subnetwork` builds that model). A width dimension may end in the choice 0 (EFTNAS
layer skipping, `space --skip`): the sub-block is skipped, its linear layers keep no rows / columns, so its
residual branch adds only the output projection's bias (none in Llama); attention with no heads goes through
`skipping.make_skippable` (the KV cache of a generating decoder).

A configuration maps dimension names to choices; missing dimensions take their maximal choice.
`SearchSpace` is versioned on disk (elastic_config.json): version 1 holds rank groups
({"groups": {name: {"modules", "space"}}}; a rank-only space is still written so, and older slimtune
reads it), version 2 (ELASTIC_VERSION) dimensions with their bindings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from ..adapters.base import AdapterLayer
from ..adapters.lora import check_rank_space
from ..adapters.peft_io import ELASTIC_CONFIG
from ..errors import ArtifactError, ConfigError

ELASTIC_VERSION = 2  # of elastic_config.json; 1: rank groups only (still read)
AXES = ("rank", "out", "in")


@dataclass(frozen=True)
class Binding:
    module: str
    axis: str
    unit: int = 1

    def __post_init__(self):
        if self.axis not in AXES:
            raise ConfigError(f"binding of {self.module}: unknown axis {self.axis!r}; axes are {', '.join(AXES)}")
        if isinstance(self.unit, bool) or not isinstance(self.unit, int) or self.unit < 1:
            raise ConfigError(f"binding of {self.module}: the unit must be a positive integer, got {self.unit!r}")


@dataclass
class Dimension:
    name: str
    choices: list[int]
    bindings: list[Binding] = field(default_factory=list)

    def __post_init__(self):
        self.choices = check_rank_space(self.choices) if self.kind == "rank" else _check_choices(self.choices, self.name)
        self.bindings = [b if isinstance(b, Binding) else Binding(*b) for b in self.bindings]
        if not self.bindings:
            raise ConfigError(f"dimension {self.name} binds no module axis")

    @property
    def kind(self) -> str:
        """'rank' when every binding is a rank axis, else 'width'."""
        return "rank" if all((b.axis if isinstance(b, Binding) else b[1]) == "rank" for b in self.bindings) else "width"

    # the names of the rank-group era (RankGroup.space, RankGroup.modules)
    @property
    def space(self) -> list[int]:
        return self.choices

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(b.module for b in self.bindings))


def _check_choices(choices, name: str) -> list[int]:
    choices = list(choices)
    if not choices or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in choices) or choices[0] < 1:
        raise ConfigError(f"dimension {name}: choices are a non-empty list of positive integers (the last may be 0: "
                          f"skip the sub-block), got {choices}")
    if any(a <= b for a, b in zip(choices, choices[1:])):
        raise ConfigError(f"dimension {name}: choices {choices} must be strictly descending (the first is the maximal one)")
    return choices


# ---- width slicing of plain linear layers -------------------------------------------------------

class WidthLinear(nn.Linear):
    """An nn.Linear using its first `active_out` rows and `active_in` columns. `set_axis` turns a
    model's nn.Linear into one in place (same parameters, names and state dict) and back at full width."""

    active_out: int | None = None
    active_in: int | None = None

    def forward(self, x):
        o = self.out_features if self.active_out is None else self.active_out  # 0: a skipped sub-block
        i = self.in_features if self.active_in is None else self.active_in
        return F.linear(x, self.weight[:o, :i], None if self.bias is None else self.bias[:o])


def axis_size(module: nn.Module, axis: str) -> int:
    """The full size of a module's axis."""
    if isinstance(module, AdapterLayer):
        if axis not in module.axes:
            raise ConfigError(f"{type(module).__name__} has no axis {axis!r}")
        return module.axes[axis]
    if isinstance(module, nn.Linear) and axis in ("out", "in"):
        return module.out_features if axis == "out" else module.in_features
    raise ConfigError(f"a {type(module).__name__} has no {axis!r} axis to bind"
                      + ("; rank axes belong to LoRA layers (add the adapter first)" if axis == "rank" else ""))


def set_axis(module: nn.Module, axis: str, size: int) -> None:
    """Make a module use the first `size` entries of an axis (adapter layers: `AdapterLayer.set_axis`)."""
    if isinstance(module, AdapterLayer):
        module.set_axis(axis, size)
        return
    full = axis_size(module, axis)
    if type(module) not in (nn.Linear, WidthLinear):
        raise ConfigError(f"width slicing supports nn.Linear and adapter layers, not {type(module).__name__}")
    if not 0 <= size <= full:
        raise ConfigError(f"axis {axis!r} has {full} entries; cannot use the first {size}")
    active = {"out": getattr(module, "active_out", None), "in": getattr(module, "active_in", None)}
    active[axis] = None if size == full else int(size)
    if active["out"] is None and active["in"] is None:  # back to a plain nn.Linear, no attributes left behind
        module.__dict__.pop("active_out", None)
        module.__dict__.pop("active_in", None)
        module.__class__ = nn.Linear
    else:
        module.__class__ = WidthLinear
        module.active_out, module.active_in = active["out"], active["in"]


def active_size(module: nn.Module, axis: str) -> int:
    if isinstance(module, AdapterLayer):
        return module.active_axis(axis)
    active = getattr(module, "active_out" if axis == "out" else "active_in", None)
    return axis_size(module, axis) if active is None else active


# ---- the space ---------------------------------------------------------------------------------

class SearchSpace:
    """A set of dimensions; a configuration maps each dimension to one of its choices."""

    def __init__(self, dimensions, preset: str | None = None):
        dims = list(dimensions.values()) if isinstance(dimensions, dict) else list(dimensions)
        if not dims:
            raise ConfigError("a search space needs at least one dimension")
        self.dimensions: dict[str, Dimension] = {}
        for d in dims:
            if d.name in self.dimensions:
                raise ConfigError(f"two dimensions are named {d.name}")
            self.dimensions[d.name] = d
        seen: dict[tuple[str, str], str] = {}
        for d in dims:
            for b in d.bindings:
                other = seen.setdefault((b.module, b.axis), d.name)
                if other != d.name:
                    raise ConfigError(f"axis {b.axis!r} of {b.module} is bound by two dimensions ({other}, {d.name})")
        self.preset = preset

    @property
    def groups(self) -> dict[str, Dimension]:
        """The dimensions (their name when every dimension was a rank group)."""
        return self.dimensions

    def __add__(self, other: "SearchSpace") -> "SearchSpace":
        """Both spaces' dimensions (e.g. rank dimensions + MLP widths + heads)."""
        return type(self)([*self.dimensions.values(), *other.dimensions.values()], self.preset or other.preset)

    def of_kind(self, kind: str) -> dict[str, Dimension]:
        return {n: d for n, d in self.dimensions.items() if d.kind == kind}

    # ---- configurations ---------------------------------------------------------------
    def maximal(self) -> dict[str, int]:
        return {n: d.choices[0] for n, d in self.dimensions.items()}

    def minimal(self) -> dict[str, int]:
        return {n: d.choices[-1] for n, d in self.dimensions.items()}

    def median(self) -> dict[str, int]:
        """Shears' heuristic: choices[(len - 1) // 2] of each descending list ([32, 24, 16] -> 24)."""
        return {n: d.choices[(len(d.choices) - 1) // 2] for n, d in self.dimensions.items()}

    def check(self, config: dict[str, int]) -> dict[str, int]:
        """Validate a full or partial configuration; missing dimensions take their maximal choice."""
        unknown = sorted(set(config) - set(self.dimensions))
        if unknown:
            what = "rank group" if all(d.kind == "rank" for d in self.dimensions.values()) else "dimension"
            raise ConfigError(f"unknown {what}(s) {unknown[:5]}; this space's {what}s are e.g. "
                              f"{list(self.dimensions)[:4]}")
        for n, c in config.items():
            if c not in self.dimensions[n].choices:
                what = "rank" if self.dimensions[n].kind == "rank" else "choice"
                raise ConfigError(f"{what} {c!r} for dimension {n} is outside its space {self.dimensions[n].choices}")
        return {**self.maximal(), **{n: int(c) for n, c in config.items()}}

    def module_axes(self, config: dict[str, int]) -> dict[str, dict[str, int]]:
        """module -> {axis: active size} under a configuration."""
        config = self.check(config)
        out: dict[str, dict[str, int]] = {}
        for n, d in self.dimensions.items():
            for b in d.bindings:
                out.setdefault(b.module, {})[b.axis] = config[n] * b.unit
        return out

    def module_ranks(self, config: dict[str, int]) -> dict[str, int]:
        return {m: axes["rank"] for m, axes in self.module_axes(config).items() if "rank" in axes}

    def size(self, model, config: dict[str, int]) -> int:
        """Parameters of the sub-network a configuration selects, base and adapters: every parameter of the
        model, with each linear layer (and its adapter) counted at its active rank and widths.

        The legacy form `size(config, widths)` (widths: module -> (in, out)) counts only the rank
        dimensions' adapter parameters, r·(in + out) per module, as the rank-only space did."""
        if not isinstance(model, nn.Module):
            config, widths = model, config
            return sum(r * sum(widths[m]) for m, r in self.module_ranks(config).items())
        axes = self.module_axes(config)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, (AdapterLayer, nn.Linear))
                   and not _inside_adapter(n, model)}
        counted = {id(p) for m in linears.values() for p in m.parameters()}
        total = sum(p.numel() for p in model.parameters() if id(p) not in counted)
        for name, m in linears.items():
            sizes = axes.get(name, {})
            base = m.base_layer if isinstance(m, AdapterLayer) else m
            o = sizes.get("out", axis_size(m, "out"))
            i = sizes.get("in", axis_size(m, "in"))
            total += o * i + (o if getattr(base, "bias", None) is not None else 0)
            if isinstance(m, AdapterLayer) and "rank" in m.axes:
                total += sizes.get("rank", m.axes["rank"]) * (o + i)
        return total

    # ---- the model --------------------------------------------------------------------
    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = dict(model.named_modules())
        for d in self.dimensions.values():
            for b in d.bindings:
                module = modules.get(b.module)
                if module is None or (b.axis == "rank" and not isinstance(module, AdapterLayer)):
                    missing = sorted(x.module for x in d.bindings if x.module not in modules or (
                        x.axis == "rank" and not isinstance(modules[x.module], AdapterLayer)))
                    what = "LoRA layer" if b.axis == "rank" else "module"
                    raise ConfigError(f"the model has no {what} for module(s) {missing[:3]} of the elastic space")
                axis_size(module, b.axis)
        return modules

    def apply(self, model: nn.Module, config: dict[str, int]) -> dict[str, int]:
        """Set every bound axis: active ranks of LoRA layers, widths of linear layers; returns the full configuration."""
        config = self.check(config)
        modules = self._modules(model)
        for n, d in self.dimensions.items():
            for b in d.bindings:
                set_axis(modules[b.module], b.axis, config[n] * b.unit)
        if 0 in config.values():  # a skipped sub-block: attention without heads must skip cleanly
            from ..skipping import make_skippable

            make_skippable(model)
        return config

    def bind(self, model: nn.Module) -> None:
        """Give every elastic LoRA layer its rank dimension's choices (after loading a super-adapter), and
        check that every width binding fits its module."""
        modules = self._modules(model)
        for d in self.dimensions.values():
            for b in d.bindings:
                if b.axis == "rank":
                    layer = modules[b.module]
                    layer.rank_space = check_rank_space([c * b.unit for c in d.choices], layer.r)
                elif d.choices[0] * b.unit > axis_size(modules[b.module], b.axis):
                    raise ConfigError(f"dimension {d.name} needs {d.choices[0] * b.unit} entries of axis {b.axis!r} "
                                      f"of {b.module}, which has {axis_size(modules[b.module], b.axis)}")

    # ---- files --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Version 1 (rank groups, which older slimtune reads) when every dimension is a rank dimension
        of unit 1, else version 2 (dimensions with their bindings)."""
        if all(d.kind == "rank" and all(b.unit == 1 for b in d.bindings) for d in self.dimensions.values()):
            return {"version": 1, "preset": self.preset,
                    "groups": {n: {"modules": d.modules, "space": d.choices} for n, d in self.dimensions.items()}}
        return {"version": ELASTIC_VERSION, "preset": self.preset,
                "dimensions": {n: {"choices": d.choices, "bindings": [[b.module, b.axis, b.unit] for b in d.bindings]}
                               for n, d in self.dimensions.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        version = data.get("version", 1)  # files written before the version field are version 1
        if version == 1:  # rank groups
            return cls([Dimension(g, check_rank_space(v["space"]), [Binding(m, "rank") for m in v["modules"]])
                        for g, v in data["groups"].items()], data.get("preset"))
        if version != ELASTIC_VERSION:
            raise ArtifactError(f"elastic configuration version {version!r} is not one this slimtune reads "
                                f"(versions 1 to {ELASTIC_VERSION}); upgrade slimtune or re-train the super-adapter")
        return cls([Dimension(n, list(v["choices"]), [Binding(str(m), str(a), int(u)) for m, a, u in v["bindings"]])
                    for n, v in data["dimensions"].items()], data.get("preset"))

    def save(self, directory: str | Path) -> None:
        (Path(directory) / ELASTIC_CONFIG).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "SearchSpace":
        path = Path(directory) / ELASTIC_CONFIG
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an elastic super-adapter (no {ELASTIC_CONFIG}); "
                                "train one with `slimtune finetune --adapter nls`")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path} is not a valid elastic configuration ({e})") from e


def _inside_adapter(name: str, model: nn.Module) -> bool:
    """Whether a module is part of an adapter layer (its base_layer, lora_A, lora_B), counted with it."""
    parent = name.rpartition(".")[0]
    while parent:
        if isinstance(model.get_submodule(parent), AdapterLayer):
            return True
        parent = parent.rpartition(".")[0]
    return False
