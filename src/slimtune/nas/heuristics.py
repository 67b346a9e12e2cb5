"""Heuristic sub-adapters of an elastic super-adapter.

maximal / median / minimal take each group's first / middle / last rank. `nncf` is NNCF's stronger
choice: evaluate the median, the per-group most frequently sampled rank and the five configurations
with the lowest training loss, and keep the best on a validation split (the caller scores them).
"""

from __future__ import annotations

import json

from .elastic import SearchSpace
from .space import frequencies

HEURISTICS = ("maximal", "median", "minimal", "nncf")


def most_frequent(space: SearchSpace, history: list[dict]) -> dict[str, int]:
    """Per group, the rank sampled most often in training (ties: the larger rank)."""
    freq = frequencies(history)
    return {g: max(d.choices, key=lambda r: (freq.get(g, {}).get(r, 0), r)) for g, d in space.dimensions.items()}


def lowest_loss(history: list[dict], k: int = 5) -> list[dict[str, int]]:
    """The k distinct configurations with the lowest recorded training loss."""
    out: list[dict[str, int]] = []
    for entry in sorted(history, key=lambda e: e["loss"]):
        config = {g: int(r) for g, r in entry["config"].items()}
        if config not in out:
            out.append(config)
        if len(out) == k:
            break
    return out


def nncf_candidates(space: SearchSpace, history: list[dict]) -> list[tuple[str, dict[str, int]]]:
    """(label, configuration) pairs, duplicates removed, in NNCF's order."""
    candidates = [("median", space.median()), ("most_frequent", most_frequent(space, history))]
    candidates += [(f"lowest_loss_{i + 1}", c) for i, c in enumerate(lowest_loss(history))]
    seen, out = [], []
    for label, config in candidates:
        config = space.check(config)
        if config not in seen:
            seen.append(config)
            out.append((label, config))
    return out


def parse_selection(space: SearchSpace, selection) -> tuple[str, dict[str, int] | None]:
    """A heuristic name, or an explicit configuration (dict or JSON text) checked against the space.

    Returns (label, configuration); the configuration is None for 'nncf' (it needs scoring)."""
    if isinstance(selection, str) and selection in HEURISTICS:
        if selection == "nncf":
            return selection, None
        return selection, getattr(space, selection)()
    if isinstance(selection, str):
        try:
            selection = json.loads(selection)
        except ValueError:
            raise_unknown(selection)
    if not isinstance(selection, dict):
        raise_unknown(selection)
    return "explicit", space.check(selection)


def raise_unknown(selection) -> None:
    from ..errors import ConfigError

    raise ConfigError(f"unknown sub-adapter selection {selection!r}: use one of {', '.join(HEURISTICS)} or a JSON "
                      "object mapping rank groups to ranks, e.g. '{\"model.layers.0:qkv\": 16}'")


def first_trials(space: SearchSpace, adapter, enqueue: dict | None = None) -> dict[str, dict[str, int]]:
    """A search's first trials: maximal, median, minimal, the most frequently sampled configuration
    (with a training history), then the caller's; each distinct configuration once."""
    from pathlib import Path

    from .sampling import HISTORY_FILE

    trials = {"maximal": space.maximal(), "median": space.median(), "minimal": space.minimal()}
    if (Path(adapter) / HISTORY_FILE).is_file():
        trials["most_frequent"] = most_frequent(space, json.loads((Path(adapter) / HISTORY_FILE).read_text()))
    trials.update({label: space.check(c) for label, c in (enqueue or {}).items()})
    return {k: v for i, (k, v) in enumerate(trials.items()) if v not in list(trials.values())[:i]}
