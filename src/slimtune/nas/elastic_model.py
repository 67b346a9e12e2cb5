"""A whole model with elastic widths: the EFTNAS `space` and `supernet` artifacts (an HF model directory with
elastic_config.json and no adapter). What search and extract need of it.

  is_elastic_model     a model directory with a width search space (and no adapter_config.json)
  cost_functions       config -> cost, exact for widths (nas.budgets.CostModel): params (every parameter,
                       the bound linear layers at their kept widths) and macs (MACs per token: linear
                       weights + attention products at the space's sequence length)
  budget_trials        the space stage's per-budget widths (each meets its budget within the space's
                       tolerance): the first trials of a search, so every budget has a candidate
  make_elastic_objective  a search trial's measure: validation accuracy (or, decoders, completion loss)
                       of the active configuration, and its cost
  extract_model        the physically smaller model of a configuration, and the per-module shapes to record
                       (widths_io) when no stock config describes it: widths that differ between blocks,
                       fewer heads in a family whose config derives the head size from hidden / heads (BERT),
                       or a skipped sub-block (width 0: zero-size linears, see skipping.py; the layer stays)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch import nn

from ..architectures import architecture_of
from ..errors import ConfigError
from .elastic import SearchSpace

SPACE_FILE = "eftnas_space.json"  # written by the space stage (eftnas.py), carried by the supernet
ELASTIC_MODEL_OBJECTIVES = ("accuracy", "loss", "params", "total_params", "macs", "latency_prefill", "latency_decode")


def is_elastic_model(path) -> bool:
    """A model directory carrying a width search space (the space / supernet stages' artifacts)."""
    from ..adapters.peft_io import ELASTIC_CONFIG

    p = Path(str(path))
    return p.is_dir() and (p / "config.json").is_file() and (p / ELASTIC_CONFIG).is_file() \
        and not (p / "adapter_config.json").is_file()


def space_record(path) -> dict:
    """eftnas_space.json of an elastic model ({} when it has none)."""
    f = Path(str(path)) / SPACE_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def cost_functions(net: nn.Module, space: SearchSpace, seq_len: int = 128) -> dict[str, Callable[[dict], float]]:
    """{'params', 'total_params', 'macs'}: config -> cost of the sub-network (module docstring)."""
    from .budgets import cost_model

    dims = list(space.dimensions.values())
    space.apply(net, space.maximal())
    models = {m: cost_model(net, dims, m, seq_len) for m in ("params", "macs")}
    out = {m: (lambda c, cm=cm: float(cm.cost(space.check(c)))) for m, cm in models.items()}
    out["total_params"] = out["params"]
    return out


def budget_trials(path) -> dict[str, dict[str, int]]:
    """{'budget=<fraction>': widths} from the space stage's record (empty without one)."""
    return {f"budget={r['fraction']:g}": {n: int(w) for n, w in r["widths"].items()}
            for r in space_record(path).get("budgets", [])}


def budget_targets(path, space: SearchSpace) -> list[dict[str, int]]:
    """The space's budget widths other than its maximal and minimal configurations (the supernet's 'budgets'
    sampler draws from them), each once, in the record's order."""
    ends, targets = (space.maximal(), space.minimal()), []
    for widths in budget_trials(path).values():
        config = space.check(widths)
        if config not in ends and config not in targets:
            targets.append(config)
    return targets


def check_objectives(path, objectives: list[str]) -> None:
    """The objectives a search over the elastic model at `path` can measure (before any work)."""
    config = json.loads((Path(str(path)) / "config.json").read_text())
    classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    wrong = [o for o in objectives if o not in ELASTIC_MODEL_OBJECTIVES
             or (classifier and o in ("loss", "latency_decode"))]
    if wrong:
        raise ConfigError(f"objective(s) {wrong} do not apply to an elastic-width {'classifier' if classifier else 'model'}; "
                          "choose from accuracy (validation), params, macs, latency_prefill"
                          + ("" if classifier else ", latency_decode, loss") + " (e.g. objectives accuracy,macs)")


def make_elastic_objective(net: nn.Module, tokenizer, task, space: SearchSpace, objectives: list[str],
                           limit: int | None, seq_len: int = 128) -> Callable[[dict[str, int]], dict[str, float]]:
    """config -> {objective: value} on the model whose widths the searcher has already set."""
    from .objective import validation_scores

    costs = cost_functions(net, space, seq_len)

    def measure(config: dict[str, int]) -> dict[str, float]:
        return {**{o: costs[o](config) for o in objectives if o in costs},
                **validation_scores(net, tokenizer, task, objectives, limit)}

    return measure


def derived_head_size(net: nn.Module) -> bool:
    """Whether the family's config derives the head size from hidden / heads (BERT: no head_dim key)."""
    arch = architecture_of(net)
    return arch is not None and arch.kv_heads_key is None


def extract_model(net: nn.Module, space: SearchSpace, config: dict[str, int]) -> tuple[nn.Module, dict | None]:
    """(the physically smaller model computing `config`, per-module [out, in] shapes to record or None when
    its config describes it; module docstring). The super-network is left at its maximal configuration."""
    from .subnetwork import binding_shapes, extract_subnetwork

    space.apply(net, space.maximal())
    config = space.check(config)
    sub = extract_subnetwork(net, space, config)
    heads = {n: c for n, c in config.items() if n.endswith(":heads")}
    fewer_heads = any(c != space.dimensions[n].choices[0] for n, c in heads.items())
    if fewer_heads and derived_head_size(net):
        # keep the config's head count, so the head size stays hidden / heads; the shapes say the rest
        sub.config.num_attention_heads = net.config.num_attention_heads
        sub.config.__dict__.pop("head_dim", None)
    uniform = all(len({c for n, c in config.items() if n.endswith(suffix)}) <= 1 for suffix in (":mlp", ":heads"))
    if uniform and 0 not in config.values() and not (fewer_heads and derived_head_size(net)):
        return sub, None
    return sub, binding_shapes(sub, space)


def kept_heads(net: nn.Module, space: SearchSpace, config: dict[str, int]) -> dict[str, int]:
    """{query projection: query heads kept} per heads dimension (recorded beside the shapes, so that the
    loader checks them against the head size the config gives)."""
    arch = architecture_of(net)
    if arch is None:
        return {}
    head_dim = arch.heads(net.config)[2]
    config = space.check(config)
    out = {}
    for n, d in space.dimensions.items():
        if n.endswith(":heads"):
            q = d.bindings[0]  # q 'out', in units of one KV group's query heads
            out[q.module] = config[n] * q.unit // head_dim
    return out
