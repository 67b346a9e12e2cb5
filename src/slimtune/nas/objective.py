"""What a search trial measures for one sub-adapter configuration: validation accuracy or loss, and
adapter parameters, non-zero weights, the sub-network's total parameters or its linear MACs per token
(measured latency: nas/latency.py, added by the search)."""

from __future__ import annotations

from typing import Callable

from ..data.tasks import Task
from ..errors import ConfigError
from .elastic import SearchSpace
from .cost import linear_macs


def check_measurable(objectives: list[str], space: SearchSpace, encoder: bool) -> None:
    """Refuse, before any work, objectives a search of this super-network cannot measure: loss on an encoder
    classifier (it has no completion loss), and latency where nas.latency.check_latency says so."""
    from .latency import check_latency

    if encoder and "loss" in objectives:
        raise ConfigError("loss is a causal LM's completion loss; search an encoder classifier on accuracy "
                          "(validation) with params, total_params, macs or latency_prefill")
    check_latency(objectives, space, encoder)


def task_score(result: dict) -> float:
    """The headline number of an evaluate_model result: acc (multiple choice) or accuracy (generation)."""
    from ..evaluate.compare import headline

    return result[headline(result)]


def validation_scores(net, tokenizer, task: Task, objectives: list[str], limit: int | None) -> dict[str, float]:
    """The objectives measured on the task's validation split (its first `limit` examples): accuracy, loss."""
    from ..evaluate import evaluate_model
    from ..evaluate.loss import completion_loss

    values: dict[str, float] = {}
    if "accuracy" in objectives:
        values["accuracy"] = task_score(evaluate_model(net, tokenizer, task=task, split="validation", limit=limit,
                                                       progress=False))
    if "loss" in objectives:
        values["loss"] = completion_loss(net, tokenizer, task.validation[:limit],
                                         add_eos=task.kind == "generation")["loss"]
    return values


def make_objective(net, tokenizer, task: Task | None, space: SearchSpace, objectives: list[str],
                   limit: int | None) -> Callable[[dict[str, int]], dict[str, float]]:
    """config -> {objective: value} on the model whose active ranks the searcher has already set."""
    from ..adapters import adapter_layers

    layers = adapter_layers(net)
    widths = {n: (l.axes["in"], l.axes["out"]) for n, l in layers.items()}
    base_nonzero = sum(int((l.base_layer.weight != 0).sum()) for l in layers.values()) if "nonzero" in objectives else 0

    def measure(config: dict[str, int]) -> dict[str, float]:
        values = validation_scores(net, tokenizer, task, objectives, limit)
        params = space.size(config, widths)
        values["params"] = float(params)
        values["nonzero"] = float(base_nonzero + params)
        if "total_params" in objectives:  # base + adapter parameters of the sub-network (LoNAS)
            values["total_params"] = float(space.size(net, config))
        if "macs" in objectives:
            values["macs"] = float(linear_macs(net, space, config))
        return values

    return measure


def score_candidates(net, tokenizer, space: SearchSpace, candidates, task: Task, limit: int | None,
                     progress: bool = True) -> tuple[list[dict], dict]:
    """NNCF's selection: each (label, configuration) scored on the task's validation split; returns
    every scored candidate and the best (the first of equals: the median comes first)."""
    from ..evaluate import evaluate_model

    scored = []
    for label, config in candidates:
        space.apply(net, config)
        result = evaluate_model(net, tokenizer, task=task, split="validation", limit=limit, progress=progress)
        scored.append({"label": label, "config": config, "score": task_score(result)})
    return scored, max(scored, key=lambda c: c["score"])
