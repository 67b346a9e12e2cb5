"""PaCA (Woo et al. 2025): fine-tune a selected subset of each target's input columns in place, no
adapter branch.

`PacaLinear` wraps a frozen linear module and trains W[:, idx] (out × c, the `paca_weight`
parameter) for c selected input columns idx; the layer computes y = x·W_effᵀ + b with W_eff the base
weight whose columns idx are the trained ones: one GEMM forward, and backward keeps only x[..., idx]
(N × c, not the whole input as LoRA's dA needs) for the one small weight gradient gᵀ·x[..., idx]
(`_PacaFunction`; W_eff is rebuilt in backward rather than kept).

Columns are chosen at random (the paper's choice), by weight magnitude (largest ‖W[:, j]‖₂) or by
activation magnitude (largest ‖X_j‖₂ over calibration inputs: the columns whose gradient gᵀ·X_j is
largest). On a sparse base only the non-pruned entries of the selected columns train: their gradient
is masked and the forward writes the pruned entries as zero, so zeros stay zeros whatever the optimizer.

On an INT4 base (QuantLinear) the columns train in float, starting from the dequantized base, and the
merge re-quantizes them onto the SAME grid (same scales and zero points; the other columns keep their
codes exactly). Why not train on the grid with a straight-through estimator, as QA-SparsePEFT does: a
column update changes the forward only once it crosses half a grid step, so small learning rates
would not move the model at all during training (finetune's qa_weights='quantized' shows the same
slow learning for LoRA); the cost of the float choice is the rounding at merge (half a grid step per
entry, more where a trained value left its group's range and is clamped), which `merge_error` reports.

Artifact (`save_paca` / `load_paca`): paca_config.json + paca_columns.safetensors (per module the
column indices and the trained columns), a slimtune format: stock PEFT cannot load it. The update is
still a LoRA of rank c in disguise (A = one-hot rows of idx, B = trained - initial columns), which
`export()` gives for the contract; `slimtune merge` writes the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ArtifactError, ConfigError
from .base import AdapterExport, AdapterLayer, adapter_layers
from .wrap import wrap_linears

CONFIG_FILE = "paca_config.json"
WEIGHTS_FILE = "paca_columns.safetensors"
FORMAT = "slimtune-paca"
SELECTIONS = ("random", "weight", "activation")


class PacaOptions(BaseModel):
    """finetune --adapter paca: how many input columns train per module, and which."""

    model_config = ConfigDict(extra="forbid")

    columns: int | None = Field(None, ge=1, description="paca: input columns trained per module (default: as many "
                                                        "trainable parameters as LoRA of rank --rank, "
                                                        "c = r(in+out)/out)")
    selection: Literal[SELECTIONS] = Field("random", description="paca: which columns: random, weight (largest "
                                                                 "column norms) or activation (largest input norms)")


def rank_equivalent_columns(rank: int, in_features: int, out_features: int) -> int:
    """The columns whose parameters (c·out) equal a rank-r LoRA's (r·(in + out)), at most every column."""
    return max(1, min(in_features, round(rank * (in_features + out_features) / out_features)))


class _PacaFunction(torch.autograd.Function):
    """y = x·W_effᵀ + b; backward: dx = g·W_eff, d(columns) = gᵀ·x[..., idx] (masked when sparse)."""

    @staticmethod
    def forward(ctx, x, columns, layer):
        weight = layer.effective_weight(columns).to(x.dtype)
        bias = layer.base_layer.bias
        y = F.linear(x, weight, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x.index_select(-1, layer.columns) if ctx.needs_input_grad[1] else None, columns)
        ctx.layer, ctx.shape = layer, x.shape
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x_sel, columns = ctx.saved_tensors
        layer = ctx.layer
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ layer.effective_weight(columns).to(g.dtype)).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_c = (g.t() @ x_sel.reshape(-1, x_sel.shape[-1])).to(columns.dtype)
            if layer.pruned is not None:
                grad_c.masked_fill_(layer.pruned, 0.0)
        return grad_x, grad_c, None


class PacaLinear(AdapterLayer):
    """A frozen linear layer whose selected input columns `columns` train in place (module docstring)."""

    def __init__(self, base_layer: nn.Module, columns: torch.Tensor, sparse: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        for p in base_layer.parameters():
            p.requires_grad_(False)
        w = base_layer.weight.detach()
        columns = torch.as_tensor(columns, dtype=torch.long, device=w.device).flatten().sort().values
        if columns.numel() == 0 or columns.unique().numel() != columns.numel() or int(columns.min()) < 0 \
                or int(columns.max()) >= self.in_features:
            raise ConfigError(f"PaCA columns must be distinct indices in [0, {self.in_features}), got {columns.tolist()[:8]}")
        self.register_buffer("columns", columns)
        initial = w.index_select(1, columns).float() if not w.is_floating_point() else w.index_select(1, columns)
        self.register_buffer("initial", initial.clone(), persistent=False)
        self.paca_weight = nn.Parameter(initial.clone())
        self.register_buffer("pruned", (initial == 0) if sparse else None, persistent=False)
        self.grid = getattr(base_layer, "params", None)  # a QuantLinear's grid: the merge lands on it

    @property
    def sparse(self) -> bool:
        return self.pruned is not None

    @property
    def quant_aware(self) -> bool:
        """True on an INT4 base: the merge writes codes on the base's own grid (api.merge keeps it packed)."""
        return self.grid is not None

    def set_axis(self, name: str, size: int) -> None:
        raise ConfigError("PaCA layers have no elastic axes (they train columns of the base in place)")

    # ---- weights ------------------------------------------------------------------------
    def trained_columns(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        c = self.paca_weight if columns is None else columns
        return c.masked_fill(self.pruned, 0.0) if self.pruned is not None else c

    @torch.no_grad()
    def effective_weight(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """The base weight with the selected columns replaced by the trained ones (float)."""
        w = self.base_layer.weight
        return w.index_copy(1, self.columns, self.trained_columns(columns).to(w.dtype))

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        w = self.base_layer.weight
        d = torch.zeros_like(w)
        return d.index_copy_(1, self.columns, (self.trained_columns() - self.initial).to(w.dtype))

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Float base: the trained columns written into W (the trained function exactly). INT4 base: the
        merged weight's codes on the same grid (untouched columns keep their codes)."""
        base = self.base_layer
        if self.grid is not None:
            base.set_quantized(self.grid, self.grid.quantize(self.effective_weight()))
            base.clear_cache()
            return base
        base.weight.index_copy_(1, self.columns, self.trained_columns().to(base.weight.dtype))
        return base

    @torch.no_grad()
    def merge_error(self) -> float:
        """Largest |merged - trained| entry: 0 on a float base, the rounding onto the grid on an INT4 one."""
        if self.grid is None:
            return 0.0
        w = self.effective_weight()
        return float((self.grid.fake_quantize(w) - w).abs().max())

    def export(self) -> AdapterExport:
        """The same update as a LoRA of rank c: A = one-hot rows of the columns, B = trained - initial."""
        c = len(self.columns)
        a = torch.zeros(c, self.in_features, dtype=self.initial.dtype, device=self.initial.device)
        a[torch.arange(c, device=a.device), self.columns] = 1.0
        b = (self.trained_columns() - self.initial).detach()
        variants = (("sparse",) if self.sparse else ()) + (("quant_aware",) if self.grid is not None else ())
        return AdapterExport(c, float(c), 0.0, {"lora_A.weight": a, "lora_B.weight": b.contiguous()}, variants)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.paca_weight.requires_grad:
            return _PacaFunction.apply(x, self.paca_weight, self)
        bias = self.base_layer.bias
        return F.linear(x, self.effective_weight().to(x.dtype), None if bias is None else bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, columns={len(self.columns)}"
                + (", sparse" if self.sparse else "") + (", int4 base" if self.grid is not None else ""))


# ---- selection ------------------------------------------------------------------------------
def select_columns(weight: torch.Tensor, count: int, selection: str, generator: torch.Generator | None = None,
                   activation_sqnorm: torch.Tensor | None = None) -> torch.Tensor:
    """`count` input-column indices of `weight` (out × in), ascending."""
    n = weight.shape[1]
    if selection == "random":
        idx = torch.randperm(n, generator=generator)[:count]
    elif selection == "weight":
        idx = weight.float().pow(2).sum(0).topk(count).indices
    elif selection == "activation":
        if activation_sqnorm is None:
            raise ConfigError("activation selection needs the input norms of calibration inputs")
        idx = activation_sqnorm.float().topk(count).indices
    else:
        raise ConfigError(f"unknown PaCA selection {selection!r}; choose from {', '.join(SELECTIONS)}")
    return idx.sort().values.to(weight.device)


@torch.no_grad()
def input_sqnorms(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """Σ x_j² per input column of each named module over the batches (dicts of model inputs)."""
    sums: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    return sums


def add_paca(model: nn.Module, targets: list[str], columns: int | None = None, rank: int = 16,
             selection: str = "random", seed: int = 0, sparse: bool = False,
             activation_sqnorms: dict[str, torch.Tensor] | None = None,
             indices: dict[str, torch.Tensor] | None = None) -> dict[str, PacaLinear]:
    """Wrap the named linear modules in PaCA layers: `columns` per module (default: rank-equivalent to
    LoRA rank `rank`), chosen by `selection`, or the given `indices` per module (loading)."""
    generator = torch.Generator().manual_seed(seed)

    def make(name, base):
        if indices is not None:
            return PacaLinear(base, indices[name], sparse=sparse)
        c = columns or rank_equivalent_columns(rank, base.in_features, base.out_features)
        if c > base.in_features:
            raise ConfigError(f"{name} has {base.in_features} input columns; cannot train {c} of them")
        idx = select_columns(base.weight.detach(), c, selection, generator, (activation_sqnorms or {}).get(name))
        return PacaLinear(base, idx, sparse=sparse)

    return wrap_linears(model, targets, make, "PaCA")


def paca_layers(model: nn.Module) -> dict[str, PacaLinear]:
    return {n: m for n, m in adapter_layers(model).items() if isinstance(m, PacaLinear)}


# ---- artifact ---------------------------------------------------------------------------------
def is_paca(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def save_paca(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None,
              selection: str | None = None) -> Path:
    """Write the model's PaCA layers: per module the column indices and the trained columns."""
    layers = paca_layers(model)
    if not layers:
        raise ArtifactError("the model has no PaCA layers to save")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.columns"] = layer.columns.detach().cpu().contiguous()
        tensors[f"{name}.weight"] = layer.trained_columns().detach().cpu().contiguous()
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": FORMAT})
    first = next(iter(layers.values()))
    config = {"format": FORMAT, "version": 1, "base_model_name_or_path": base_model_name_or_path,
              "selection": selection, "sparse": first.sparse, "int4_base": first.grid is not None,
              "modules": {n: {"in": l.in_features, "out": l.out_features, "columns": len(l.columns)}
                          for n, l in layers.items()},
              "note": "PaCA columns (slimtune): not a PEFT adapter; merge it with `slimtune merge`"}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def load_paca(model: nn.Module, directory: str | Path, trainable: bool = False) -> dict:
    """Wrap `model` with the PaCA layers saved in `directory` and load the trained columns."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory} is not a readable PaCA artifact ({e})") from e
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{directory / CONFIG_FILE} is not a {FORMAT} file")
    names = list(config["modules"])
    modules = dict(model.named_modules())
    for n in names:
        m = modules.get(n)
        if m is None or (getattr(m, "in_features", None), getattr(m, "out_features", None)) != (
                config["modules"][n]["in"], config["modules"][n]["out"]):
            raise ArtifactError(f"PaCA artifact {directory} does not fit this model at {n}; pass the base it was "
                                "trained on (--model)")
    layers = add_paca(model, names, sparse=bool(config.get("sparse")),
                      indices={n: tensors[f"{n}.columns"] for n in names})
    with torch.no_grad():
        for n, layer in layers.items():
            layer.paca_weight.copy_(tensors[f"{n}.weight"])
            layer.paca_weight.requires_grad_(trainable)
    return config
