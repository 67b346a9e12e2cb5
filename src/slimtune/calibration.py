"""Calibration data and the layer-by-layer runner shared by Wanda, SparseGPT and GPTQ.

The runner keeps one decoder layer's activations in memory at a time:
1. run the model's own forward with every block replaced by a recorder, and keep block 0's
   hidden states plus, for every block, the arguments the model calls it with (attention
   mask, rotary position embeddings, ...: they differ between layer types, e.g. Gemma-3's
   sliding-window and full-attention layers);
2. for each layer: run it with hooks on its linear modules that accumulate input statistics
   (per-feature sums of squares and/or Hessians), hand the statistics to a callback (which
   prunes or quantizes the layer's weights), then run the modified layer again so that the
   next layer's inputs come from the already-compressed layers, as Wanda/SparseGPT/GPTQ define.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import decoder_layers
from .errors import ConfigError

STATS = ("sqnorm", "hessian")


# ---- feeding decoder layers ----------------------------------------------------------------

class _StopForward(Exception):
    """Raised by a hook: nothing after this point of the forward pass needs to run."""


@dataclass
class LayerInputs:
    """One chunk of calibration samples at one layer: its hidden states, and, per layer index,
    the other positional and keyword arguments the model calls that layer with. They differ by
    layer: Gemma-3's full-attention layers get other rotary embeddings (another RoPE base) and
    another mask (no sliding window) than its sliding-window layers."""

    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]]

    def run(self, layer: nn.Module, index: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        args, kwargs = self.calls[index]
        out = layer(self.hidden if hidden is None else hidden, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def advance(self, layer: nn.Module, index: int) -> "LayerInputs":
        """This chunk at the next layer: layer `index` applied to the hidden states."""
        return LayerInputs(self.run(layer, index), self.calls)


def _forward_kwargs(model: nn.Module) -> dict:
    # A KV cache would grow every time a layer is re-run; switch it off where the model has one.
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values()) else {}


class _Recorder(nn.Module):
    """Stands in for a block during capture: records the call, skips the block's work."""

    def __init__(self, block: nn.Module, last: bool, sink: list):
        super().__init__()
        self.block, self.last, self.sink = block, last, sink

    def __getattr__(self, name: str):
        # Some models read a block's attributes in their loop (e.g. its attention type).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, *args, **kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, args = args[0], tuple(args[1:])
        else:
            hidden = kwargs.pop("hidden_states")
        for key in ("past_key_values", "past_key_value", "cache"):
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        self.sink.append((hidden, args, kwargs))
        if self.last:
            raise _StopForward
        return hidden  # later recorders only keep the call's other arguments


def capture_layer_inputs(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> list[LayerInputs]:
    """Run the model on input_ids (in chunks of batch_size) through its own forward, with every
    block replaced by a recorder: block 0's hidden states, and every block's own arguments
    (rotary embeddings, attention masks, any per-layer keyword), at the cost of the embeddings."""
    _, layers = decoder_layers(model)
    originals = list(layers)
    device = next(model.parameters()).device
    extra = _forward_kwargs(model)
    captured: list[LayerInputs] = []
    try:
        for chunk in input_ids.split(batch_size):
            sink: list = []
            for i in range(len(originals)):
                layers[i] = _Recorder(originals[i], i == len(originals) - 1, sink)
            try:
                model(input_ids=chunk.to(device), **extra)
            except _StopForward:
                pass
            if len(sink) != len(originals):
                raise ConfigError(f"{type(model).__name__}'s forward called {len(sink)} of its {len(originals)} "
                                  "blocks once each; layer-by-layer calibration needs every block called once")
            captured.append(LayerInputs(sink[0][0], [(a, k) for _, a, k in sink]))
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    return captured


# ---- statistics on linear inputs ---------------------------------------------------------

@dataclass
class InputStats:
    """Statistics of one input tensor, shared by every linear that reads it (e.g. q, k, v).

    sqnorm:  [in] float32, sum over calibration tokens of x_j^2 (Wanda's ||X_j||_2^2).
    hessian: [in, in], H = 2/n * sum over tokens of x x^T (SparseGPT, GPTQ).
    """

    names: list[str]
    in_features: int
    n_tokens: int = 0
    sqnorm: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    _want: tuple[str, ...] = field(default=(), repr=False)
    _hdtype: torch.dtype = field(default=torch.float32, repr=False)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        xf = x.to(torch.float32)
        self.n_tokens += x.shape[0]
        if "sqnorm" in self._want:
            part = xf.square().sum(0)  # 2x faster than vector_norm(dim=0).square() on CPU
            self.sqnorm = part if self.sqnorm is None else self.sqnorm.add_(part)
        if "hessian" in self._want:
            xh = x.to(self._hdtype)
            if self.hessian is None:
                self.hessian = torch.zeros(x.shape[1], x.shape[1], dtype=self._hdtype, device=x.device)
            _add_upper_gram(self.hessian, xh)  # raw sum, upper triangle; finished in finish()

    def finish(self) -> None:
        if self.hessian is not None:
            upper = self.hessian.triu()
            self.hessian = upper.add_(upper.triu(1).t()).mul_(2.0 / max(self.n_tokens, 1))


def _add_upper_gram(out: torch.Tensor, x: torch.Tensor, block: int = 256) -> None:
    """out += x^T x on and above the diagonal only, in column blocks: X^T X is symmetric, so the
    blocks below it are not computed (about 30% less time for the 1536-wide down projection's
    Hessian than one full GEMM; below-diagonal entries of out are left stale)."""
    n = x.shape[1]
    if n <= block:
        out.addmm_(x.t(), x)
        return
    xt = x.t()
    for i in range(0, n, block):
        out[i:i + block, i:].addmm_(xt[i:i + block], x[:, i:])


class StatsCollector:
    """Forward hooks that accumulate InputStats for a set of linear modules.

    Linears fed the very same tensor object (q/k/v, gate/up) share one InputStats, computed
    once: that halves the Hessian work and lets SparseGPT/GPTQ process them as one matrix.
    The sharing is learnt on the first chunk and checked on every later one.
    Statistics are taken in forward pre-hooks; once every linear has seen its input, the
    collector raises _StopForward (stop_early=True), so the rest of the layer (e.g. the
    down projection itself) is not computed for nothing.
    """

    def __init__(self, linears: dict[str, nn.Linear], want: Iterable[str],
                 hessian_dtype: torch.dtype = torch.float32, stop_early: bool = True):
        want = tuple(want)
        unknown = [w for w in want if w not in STATS]
        if unknown:
            raise ConfigError(f"unknown statistics {unknown}; choose from {', '.join(STATS)}")
        self.linears, self.want, self.hdtype = linears, want, hessian_dtype
        self.owner: dict[str, str] = {}
        self.stats: dict[str, InputStats] = {}
        self._seen: list[tuple[torch.Tensor, str]] = []
        self._called: set[str] = set()
        self._first = True
        self._handles = []
        self.stop_early = stop_early

    def __enter__(self) -> "StatsCollector":
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.linears.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        def fn(module, args):
            x = args[0] if args else None
            if x is None:
                raise RuntimeError(f"linear {name} was called without a positional input")
            if name in self._called:
                raise RuntimeError(f"linear {name} ran twice in one forward pass; layer-by-layer "
                                   "statistics support each linear being called once per layer call")
            self._called.add(name)
            hit = next((owner for t, owner in self._seen if t is x), None)
            if self._first:
                owner = hit or name
                self.owner[name] = owner
                if hit is None:
                    self.stats[name] = InputStats([name], x.shape[-1], _want=self.want, _hdtype=self.hdtype)
                else:
                    self.stats[owner].names.append(name)
            else:
                owner = self.owner[name]
                if (owner != name) != (hit is not None) or (hit is not None and hit != owner):
                    raise RuntimeError(f"linear {name} shared its input with {owner} on the first "
                                       "calibration chunk but not on a later one")
            if owner == name:
                self._seen.append((x, name))  # keeps x alive: its id cannot be reused this chunk
                self.stats[name].add(x)
            if self.stop_early and len(self._called) == len(self.linears):
                raise _StopForward
        return fn

    def run(self, chunk: "LayerInputs", layer: nn.Module, index: int) -> None:
        """Feed one chunk through layer `index` (stopping early once all statistics are in)."""
        try:
            chunk.run(layer, index)
        except _StopForward:
            pass
        self.end_chunk()

    def end_chunk(self) -> None:
        self._seen.clear()
        self._called.clear()
        self._first = False

    def finish(self) -> list[InputStats]:
        for s in self.stats.values():
            s.finish()
        return list(self.stats.values())


# ---- the runner ----------------------------------------------------------------------------

@dataclass
class LayerContext:
    """What the per-layer callback sees."""

    index: int
    name: str                      # qualified name of the layer, e.g. "model.layers.3"
    layer: nn.Module
    stats: list[InputStats]        # one entry per distinct input; .names are full module names
    inputs: list[LayerInputs]      # the layer's inputs (from already-processed layers)
    modules: dict[str, nn.Linear]  # the layer's target linears by full name


def input_groups(model: nn.Module, input_ids: torch.Tensor) -> list[list[str]]:
    """Names (relative to the block) of decoder block 0's linears, grouped by shared input tensor
    (e.g. [[q, k, v], [o], [gate, up], [down]]), in call order, from a forward pass on 8 tokens."""
    _, layers = decoder_layers(model)
    groups: list[tuple[torch.Tensor, list[str]]] = []

    def hook(name):
        def fn(module, args):
            group = next((g for t, g in groups if t is args[0]), None)
            if group is None:
                groups.append((args[0], [name]))
            else:
                group.append(name)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(input_ids=input_ids[:1, :8].to(next(model.parameters()).device), **_forward_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    return [names for _, names in groups]


def _just_in_time(layer_index: int, lname: str, layer: nn.Module, inputs: list[LayerInputs],
                  linears: dict[str, nn.Linear], groups: list[list[str]], want: tuple[str, ...],
                  hessian_dtype: torch.dtype, on_layer: Callable[[LayerContext], None]) -> list:
    """Forward pre-hooks that hand each group of linears sharing an input (q/k/v) its statistics
    right before the first of them runs, so the callback can compress the group in place and the
    linears then run with the compressed weights."""
    members = {n: [f"{lname}.{m}" for m in g if f"{lname}.{m}" in linears] for g in groups for n in g}
    handled: dict[str, torch.Tensor] = {}  # linear -> the input its group was compressed for
    done: set[str] = set()

    def hook(name):
        def fn(module, args):
            if name in done:
                raise RuntimeError(f"linear {name} ran twice in one forward pass; layer-by-layer "
                                   "calibration supports each linear being called once per layer call")
            done.add(name)
            x = args[0]
            if name in handled:
                if handled.pop(name) is not x:
                    raise RuntimeError(f"linear {name} does not share its input with the linears it shared "
                                       "it with in block 0; layer-by-layer calibration needs identical blocks")
                return
            group = members.get(name.removeprefix(lname + "."), [name])
            stats = InputStats(group, x.shape[-1], _want=want, _hdtype=hessian_dtype)
            stats.add(x)
            stats.finish()
            handled.update({n: x for n in group if n != name})
            on_layer(LayerContext(layer_index, lname, layer, [stats], inputs, {n: linears[n] for n in group}))
        return fn

    return [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]


def run_layerwise(model: nn.Module, input_ids: torch.Tensor, on_layer: Callable[[LayerContext], None],
                  *, collect: Iterable[str] = ("sqnorm",), targets: Iterable[str] | None = None,
                  batch_size: int = 8, hessian_dtype: torch.dtype = torch.float32,
                  progress: bool = True, desc: str = "layers", single_pass: bool = False) -> None:
    """Walk the decoder layers in order, collecting statistics of the target linears' inputs.

    For each layer: one pass with statistics hooks (stopped as soon as every target linear
    has seen its input), then on_layer(ctx), which may modify ctx.layer's weights, then one
    full pass of the (modified) layer whose outputs become the next layer's inputs.
    targets: full names of the linears to collect statistics for (default: every linear in
    the decoder layers). Memory: one layer's inputs and outputs for all calibration samples.

    single_pass: every layer runs ONCE, on all samples as one batch (batch_size is ignored);
    on_layer is called from a forward pre-hook, for each group of target linears that read the
    same input (ctx.stats has one entry), just before the first of them runs. So each group's
    statistics come from the already-compressed linears before it in the same layer too
    (true-sequential order), and a layer costs one forward pass instead of two, for one batch
    of activations of all samples in memory. The groups are learnt from block 0.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"calibration batch_size must be a positive integer, got {batch_size!r}")
    unknown = [w for w in collect if w not in STATS]
    if unknown:
        raise ConfigError(f"unknown statistics {unknown}; choose from {', '.join(STATS)}")
    prefix, layers = decoder_layers(model)
    wanted = None if targets is None else set(targets)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            groups = input_groups(model, input_ids) if single_pass else []
            inputs = capture_layer_inputs(model, input_ids, len(input_ids) if single_pass else batch_size)
            for i, layer in enumerate(tqdm(layers, desc=desc, unit="layer", disable=not progress)):
                lname = f"{prefix}.{i}" if prefix else str(i)
                linears = {f"{lname}.{n}": m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
                if wanted is not None:
                    linears = {n: m for n, m in linears.items() if n in wanted}
                if single_pass:
                    handles = _just_in_time(i, lname, layer, inputs, linears, groups, tuple(collect), hessian_dtype,
                                            on_layer)
                    try:
                        inputs = [chunk.advance(layer, i) for chunk in inputs]
                    finally:
                        for h in handles:
                            h.remove()
                    continue
                collector = StatsCollector(linears, collect, hessian_dtype)
                if linears:
                    with collector:
                        for chunk in inputs:
                            collector.run(chunk, layer, i)
                on_layer(LayerContext(i, lname, layer, collector.finish(), inputs, linears))
                del collector
                inputs = [chunk.advance(layer, i) for chunk in inputs]
    finally:
        model.train(was_training)
