"""Measured CPU latency as a search objective (LoNAS, issue 16), minimised like the other costs:

  latency_prefill  milliseconds of one forward over a prompt of `seq_len` tokens (batch 1)
  latency_decode   milliseconds per greedy token after such a prompt, from its KV cache (causal LMs only)

Each is the median of `repeats` timings after a warm-up (deploy/speed.measure_latency), with torch's
CPU threads or `threads`.

What is timed: the physically extracted sub-network of the trial's configuration with its adapters
merged, i.e. the model that `extract` + `merge` (or, for an EFTNAS supernet, `extract`) would write:
`nas.subnetwork.extract_subnetwork` copies the super-network keeping only the rows / columns / heads
the configuration keeps, `merge_adapters` folds the active-rank adapters into them. The super-network
with the configuration active computes the same function but does not run at that speed: its
width-sliced layers index the first rows and columns of the full weights at every forward (a column
slice is a strided view that the matmul copies or runs on slowly), and its adapters run unmerged, two
extra matmuls per adapted layer whose cost follows the rank, where the deployed model's does not. So
each trial builds the smaller model (one model's memory more, for the measurement only), times it and
drops it; the super-network is left as it was.

A space without width dimensions (rank-only NLS) is refused for these objectives: every merged
sub-network has the base's shapes, so the numbers would be noise. Timings are this machine's at this
moment (other processes share it): compare the trials of one search; never assert on a number.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import nn

from ..errors import ConfigError
from .elastic import SearchSpace

LATENCIES = {"latency_prefill": "prefill_ms", "latency_decode": "decode_ms_per_token"}  # objective -> speed key


def wanted(objectives) -> list[str]:
    return [o for o in objectives if o in LATENCIES]


def check_latency(objectives, space: SearchSpace, encoder: bool) -> None:
    """Refuse latency objectives the search cannot measure meaningfully (module docstring), before any work."""
    latencies = wanted(objectives)
    if not latencies:
        return
    if not space.of_kind("width"):
        raise ConfigError(f"{', '.join(latencies)}: a rank-only super-adapter merges into sub-networks of one shape "
                          "(the base's), so their latency does not depend on the configuration; search it on params or "
                          "total_params, or train elastic widths (finetune --adapter nls --widths mlp,heads)")
    if encoder and "latency_decode" in latencies:
        raise ConfigError("latency_decode times greedy decoding, which an encoder classifier does not do; "
                          "use latency_prefill")


def sub_network(net: nn.Module, space: SearchSpace, config: dict[str, int]) -> nn.Module:
    """The physically smaller model `config` selects, adapters merged: what extract + merge write."""
    from ..adapters import merge_adapters
    from .subnetwork import extract_subnetwork

    sub = extract_subnetwork(net, space, config)
    merge_adapters(sub)
    return sub.eval()


def latency_objective(net: nn.Module, space: SearchSpace, objectives, *, seq_len: int = 128, decode_tokens: int = 8,
                      repeats: int = 3, threads: int | None = None) -> Callable[[dict[str, int]], dict[str, float]]:
    """config -> {latency objective: milliseconds} of the sub-network (module docstring)."""
    from ..deploy.speed import measure_latency

    latencies = wanted(objectives)

    def measure(config: dict[str, int]) -> dict[str, float]:
        sub = sub_network(net, space, config)
        try:
            timed = measure_latency(sub, prefill_tokens=seq_len, repeats=repeats, threads=threads,
                                    decode_tokens=decode_tokens if "latency_decode" in latencies else 0)
        finally:
            del sub
        values = {o: float(timed[LATENCIES[o]]) for o in latencies}
        bad = {o: v for o, v in values.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise RuntimeError(f"latency measurement gave {bad}; expected positive milliseconds")
        return values

    return measure


def with_latency(measure: Callable, net: nn.Module, space: SearchSpace, objectives, cfg) -> Callable:
    """A search's measure plus the latency objectives among `objectives` (timed last, after accuracy), with
    the settings of a configs.SearchConfig `cfg`; `measure` itself when there are none."""
    if not wanted(objectives):
        return measure
    timed = latency_objective(net, space, objectives, seq_len=cfg.latency_seq_len, repeats=cfg.latency_repeats,
                              decode_tokens=cfg.latency_decode_tokens, threads=cfg.latency_threads)
    return lambda config: {**measure(config), **timed(config)}


def settings(objectives, cfg) -> dict:
    """The latency settings a resumed search must share ({} without a latency objective, so searches
    written before these options resume unchanged)."""
    if not wanted(objectives):
        return {}
    return {"latency": {"seq_len": cfg.latency_seq_len, "decode_tokens": cfg.latency_decode_tokens,
                        "repeats": cfg.latency_repeats, "threads": cfg.latency_threads}}
