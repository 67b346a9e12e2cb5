"""The adapter-layer contract: what every adapter layer offers the stages above it.

An adapter layer wraps one frozen linear module (`base_layer`: nn.Linear or QuantLinear) and adds a
trainable update. Merge, extract, PEFT I/O and the elastic search space only use this contract:

  base_layer              the frozen module it wraps (its parameters never train)
  adapter_parameters()    the layer's own trainable parameters, (name, parameter) pairs
  delta_weight()          the update as merging adds it (out × in): W_merged = W + delta_weight()
  effective_weight()      the weight the layer computes with (after its variants: mask, grid)
  merge()                 the module that replaces the layer once its update is folded in
  export()                the layer's weights in PEFT's LoRA layout at the active rank (`AdapterExport`)
  peft_export()           the same when stock PEFT computes this layer's function, else None
  axes                    named axes and their full sizes: 'rank' (elastic ranks), and the base's 'out'
                          (output channels, with the update's rows) and 'in' (input columns, with the
                          update's columns); `set_axis(name, size)` makes forward use the first `size`

Variants change how the update reaches the weight without a new layer class, as PEFT's LoRA variants
do: `SparseMask` (SparsePEFT: the update is masked by the base's zeros) and `QuantAware`
(QA-SparsePEFT: the merged weight is put on the base's INT grid, straight-through gradient). They
compose (sparse + quantization-aware = QA-SparsePEFT) in a fixed order: masks first, then the grid.
A variant holds no tensors: it reads the state its layer keeps (buffers move with `.to()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError

AXES = ("rank", "out", "in")


@dataclass
class AdapterExport:
    """One layer's adapter in PEFT's LoRA layout: rank, alpha (PEFT's scaling is alpha / rank), dropout,
    tensors keyed relative to the module ('lora_A.weight', 'lora_B.weight'), and the variants it
    carries (empty: a plain LoRA that stock PEFT computes exactly)."""

    rank: int
    alpha: float
    dropout: float
    tensors: dict[str, torch.Tensor]
    variants: tuple[str, ...] = field(default=())

    @property
    def peft_compatible(self) -> bool:
        return not self.variants


class Variant:
    """How an adapter's update reaches the weight; the default changes nothing.

    `update(layer, d)` acts on the dense update s·B·A (out × in), `weight(layer, w)` on the merged
    weight W + update (not differentiable: forward and merge), `weight_ste(layer, w)` on the same in a
    differentiable forward, `gradient(layer, g)` on dL/dW_eff before it is projected onto the rank,
    and `merge(layer)` returns the merged module when the variant must write it itself (else None).
    """

    name = "plain"
    order = 0  # variants apply in ascending order (masks before grids)

    def update(self, layer, d: torch.Tensor) -> torch.Tensor:
        return d

    def weight(self, layer, w: torch.Tensor) -> torch.Tensor:
        return w

    def weight_ste(self, layer, w: torch.Tensor) -> torch.Tensor:
        return w

    def gradient(self, layer, g: torch.Tensor) -> torch.Tensor:
        return g

    def merge(self, layer) -> nn.Module | None:
        return None


class SparseMask(Variant):
    """SparsePEFT: W + (s·B·A) ⊙ M with M = (W != 0), kept by the layer as the bool buffer `pruned`."""

    name, order = "sparse", 10

    def update(self, layer, d):
        return d.masked_fill_(layer.pruned, 0.0) if not d.requires_grad else d.masked_fill(layer.pruned, 0.0)

    def gradient(self, layer, g):
        return g.masked_fill_(layer.pruned, 0.0)


class QuantAware(Variant):
    """QA-SparsePEFT / QA-LoRA: the merged weight on the base's grid (`layer.grid`), Q(W + update); the
    gradient passes straight through Q; merging writes the codes on the same grid (still packed)."""

    name, order = "quant_aware", 20

    def weight(self, layer, w):
        return layer.grid.fake_quantize(w)

    def weight_ste(self, layer, w):
        return w + (layer.grid.fake_quantize(w.detach()) - w.detach())

    def merge(self, layer):
        base = layer.base_layer
        base.set_quantized(base.params, layer.grid.quantize(layer.merged_weight()))
        return base


VARIANTS = {v.name: v for v in (SparseMask(), QuantAware())}


def variants(*names: str) -> tuple[Variant, ...]:
    """The named variants in the order they apply."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown adapter variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return tuple(sorted((VARIANTS[n] for n in names), key=lambda v: v.order))


class AdapterLayer(nn.Module):
    """The contract (module docstring). Subclasses implement the abstract methods; width axes are
    shared: `active_out` / `active_in` (None: the full width) are what forward must honour."""

    base_layer: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.active_out: int | None = None
        self.active_in: int | None = None

    # ---- the contract ---------------------------------------------------------------------
    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("base_layer."))

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def merge(self) -> nn.Module:
        raise NotImplementedError

    def export(self) -> AdapterExport:
        raise NotImplementedError

    def peft_export(self) -> AdapterExport | None:
        exported = self.export()
        return exported if exported.peft_compatible else None

    @property
    def axes(self) -> dict[str, int]:
        """Full sizes of the named axes: 'out' and 'in' of the base; subclasses add their own (rank)."""
        return {"out": self.base_layer.out_features, "in": self.base_layer.in_features}

    def active_axis(self, name: str) -> int:
        if name not in ("out", "in"):
            raise ConfigError(f"{type(self).__name__} has no axis {name!r}; its axes are {list(self.axes)}")
        active = self.active_out if name == "out" else self.active_in
        return self.axes[name] if active is None else active

    def set_axis(self, name: str, size: int) -> None:
        """Use the first `size` entries of an axis in forward ('out': output channels, 'in': input columns)."""
        full = self.axes.get(name)
        if name not in ("out", "in") or full is None:
            raise ConfigError(f"{type(self).__name__} has no width axis {name!r}; its axes are {list(self.axes)}")
        size = int(size)
        if not 1 <= size <= full:
            raise ConfigError(f"axis {name!r} has {full} entries; cannot use the first {size}")
        setattr(self, "active_out" if name == "out" else "active_in", None if size == full else size)

    @property
    def width_sliced(self) -> bool:
        return self.active_out is not None or self.active_in is not None


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every adapter layer of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter layer into its base (`AdapterLayer.merge`) and put the merged modules back."""
    for name, layer in adapter_layers(model).items():
        set_submodule(model, name, layer.merge())
    return model
