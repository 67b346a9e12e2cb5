"""One function per stage. Each reads artifacts, validates everything before work starts, and
writes one new artifact directory atomically with a `slimtune.json` manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import lineage
from .adapted import load_adapted  # noqa: F401 (public here)
from .adapters import adapter_layers, merge_adapters, save_adapter
from .adapters.peft_io import base_of_adapter
from .api_extra import diagnose_intruders, generate, refactor  # noqa: F401 (stages kept in api_extra.py, public here)
from .eftnas import importance, space, supernet  # noqa: F401 (EFTNAS stages, public here)
from .finetuning import finetune  # noqa: F401 (the fine-tuning stage, public here)
from .artifacts import Artifact, atomic_dir, check_output_dir, write_json_atomic, write_manifest
from .data import load_text
from .errors import ArtifactError, ConfigError
from .guards import check_result_file
from .models import DEFAULT_MODEL, inference_options, load_model
from .nas.objective import task_score  # noqa: F401 (re-exported: bench scripts report api.task_score(result))
from .configs import (CONFIG_VERSION, CompareConfig, EvaluateConfig, ExtractConfig, InspectConfig, QuantizeConfig,
                      SearchConfig, SparsifyConfig)


def _calibration(cfg) -> dict | None:
    return cfg.calibration.model_dump() if cfg.calibration is not None else None


def evaluate(model: str | Path = DEFAULT_MODEL, *, adapter: str | Path | None = None, out: str | Path | None = None,
             config: EvaluateConfig | dict | None = None, progress: bool = True, **options: Any) -> dict:
    """Accuracy on a task split and/or perplexity on a text; optionally writes the JSON to `out`.
    Options: configs.EvaluateConfig (task, split, limit, perplexity_text, seq_len, max_windows,
    batch_size, split_seed, allow_overlap, drift, int4, embeddings), as `config` or keywords; int4 and
    embeddings apply to the evaluated model (its drift base is scored on the exact path).
    With a text, a tuned model (an adapter, or a merged model) is compared with its base on it
    (`perplexity_ratio`, evaluate/drift.py) unless drift=False.

    The task's split seed defaults to the one the model's (and adapter's) lineage used for it, else
    0. Reporting on examples that the lineage trained or selected on is refused (LeakageError)
    unless allow_overlap, and then the result carries the overlap and a warning.
    """
    from .evaluate import evaluate_model

    cfg = EvaluateConfig.build(config, options)
    task, split, limit, split_seed = cfg.task, cfg.split, cfg.limit, cfg.split_seed
    perplexity_text, seq_len, max_windows, batch_size = cfg.perplexity_text, cfg.seq_len, cfg.max_windows, cfg.batch_size
    check_result_file(out)
    history = lineage.combine(lineage.of(model), lineage.of(adapter) if adapter is not None else [])
    task_obj = held_out = None
    if task is not None:
        task_obj = lineage.task_split(task, split_seed, history)
        held_out = lineage.check_held_out(history, task_obj, split, task_obj.split(split)[:limit], cfg.allow_overlap)
    text = load_text(perplexity_text) if perplexity_text is not None else None
    if adapter is None:
        net, tokenizer = load_model(model, int4=cfg.int4, embeddings=cfg.embeddings)
    else:
        net, tokenizer = load_adapted(model, adapter)
        inference_options(net, cfg.int4, cfg.embeddings)
    result = evaluate_model(net, tokenizer, task=task_obj, split=split, limit=limit, text=text,
                            seq_len=seq_len, max_windows=max_windows, batch_size=batch_size,
                            progress=progress)
    result = {"model": str(model), "adapter": str(adapter) if adapter else None, **result}
    if text is not None and cfg.drift:
        from .evaluate.drift import perplexity_drift

        result |= perplexity_drift(model, adapter, tokenizer, text, result, seq_len, max_windows, batch_size, progress)
    if task_obj is not None:
        result |= {"task_spec": task_obj.spec, "split_seed": task_obj.split_seed,
                   "split_sizes": {name: len(task_obj.split(name)) for name in ("train", "validation", "test")},
                   "held_out": held_out}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    return result


def extract(adapter: str | Path | None = None, *, out: str | Path, from_search: str | Path | None = None,
            model: str | Path | None = None, config: ExtractConfig | dict | None = None, overwrite: bool = False,
            progress: bool = True, **options: Any) -> Path:
    """Export one sub-adapter of an elastic super-adapter as a standard PEFT LoRA (rank_pattern,
    alpha_pattern). `select`: maximal, median, minimal, nncf (the best of NNCF's candidates on the
    task's VALIDATION split), or an explicit {group: rank} configuration. With `from_search` (a
    `search` run directory), the configuration is a searched trial instead: `pick` is
    best-accuracy, smallest, knee (of the Pareto front) or trial=N. The validation split is read with
    the split seed the super-adapter's lineage used (or `split_seed`); the examples that chose the
    sub-adapter join its lineage as a selection set. Options: configs.ExtractConfig (select, pick,
    task, limit, split_seed), as `config` or keywords. From an EFTNAS supernet (or a search over one) it
    writes the physically smaller model instead (eftnas.extract_elastic)."""
    from .nas import ElasticSpace, nncf_candidates, parse_selection
    from .nas.lonas import subnetwork_files
    from .nas.objective import score_candidates
    from .nas.sampling import HISTORY_FILE

    started = time.time()
    out = check_output_dir(out, overwrite)
    cfg = ExtractConfig.build(config, options)
    select, pick, task, limit, split_seed = cfg.select, cfg.pick, cfg.task, cfg.limit, cfg.split_seed
    if from_search is not None:
        from .nas.run_dir import picked_trial

        adapter, select, picked = picked_trial(from_search, pick)
    elif adapter is None:
        raise ConfigError("extract needs a super-adapter (--adapter) or a search run (--from-search)")
    from .nas.elastic_model import is_elastic_model

    if is_elastic_model(adapter):  # EFTNAS: a whole model with elastic widths -> a physically smaller model
        from .eftnas import extract_elastic

        return extract_elastic(adapter, out=out, select=select, cfg=cfg, overwrite=overwrite, started=started,
                               history=lineage.of(from_search if from_search is not None else adapter),
                               picked=picked if from_search is not None else None)
    elastic = ElasticSpace.load(adapter)
    label, config = parse_selection(elastic, select)
    if from_search is not None:
        label = f"search:{pick or 'knee'}:trial={picked['trial']}"
    super_adapter = Artifact.find(adapter)
    recorded = super_adapter.config if super_adapter else {}
    history = lineage.of(from_search if from_search is not None else adapter)
    model = model or base_of_adapter(adapter)
    candidates = []
    if config is None:  # nncf: score the candidates on the validation split
        import json

        history_path = Path(adapter) / HISTORY_FILE
        if not history_path.is_file():
            raise ArtifactError(f"{adapter} has no {HISTORY_FILE}: the nncf selection needs the training history")
        task = task or recorded.get("task")
        if task is None:
            raise ConfigError("the nncf selection scores candidates on a task's validation split: pass --task")
        task_obj = lineage.task_split(task, split_seed, history)
        if not task_obj.validation:
            raise ConfigError(f"task {task_obj.name} has no validation split to score candidates on")
        history = lineage.combine(history, [lineage.record("extract", "select", task_obj, "validation",
                                                           task_obj.validation[:limit], out)])
        pending = nncf_candidates(elastic, json.loads(history_path.read_text()))
    net, tokenizer = load_adapted(model, adapter)
    if config is None:
        candidates, best = score_candidates(net, tokenizer, elastic, pending, task_obj, limit, progress)
        label, config = f"nncf:{best['label']}", best["config"]
    elastic.apply(net, config)
    widths = {n: (l.in_features, l.out_features) for n, l in adapter_layers(net).items()}
    with atomic_dir(out, overwrite) as tmp:
        save_adapter(net, tmp, base_model_name_or_path=str(model))
        lonas = subnetwork_files(tmp, adapter, net, elastic, config)  # LoNAS: widths and channel order
        mode = {k: recorded.get(k) for k in ("sparse", "quant_aware", "qa_weights", "task")}
        mode["float_base"] = super_adapter.input("float_base") if super_adapter else None  # where it is now
        write_manifest(tmp, stage="extract", method=label,
                       config={**cfg.record(), "model": str(model), "super_adapter": str(adapter), "selection": label,
                               "ranks": config, **mode},
                       inputs={"adapter": adapter},
                       metrics={"adapter_parameters": elastic.size(config, widths),
                                "maximal_parameters": elastic.size(elastic.maximal(), widths),
                                "candidates": candidates, **lonas,
                                **({"search_objectives": picked["objectives"]} if from_search is not None else {})},
                       started=started, lineage=history)
    return out


def sparsify(model: str | Path = DEFAULT_MODEL, *, out: str | Path, config: SparsifyConfig | dict | None = None,
             overwrite: bool = False, progress: bool = True, **options: Any) -> Path:
    """Prune a model's linear layers (magnitude, Wanda, SparseGPT; unstructured or N:M) and save it
    as an HF directory with explicit zeros; the manifest records per-matrix sparsity. Options:
    configs.SparsifyConfig (method, sparsity, pattern, calibration, skip, options), as `config` or
    keywords."""
    from .sparsity import DEFAULT_SKIP, sparsify_model
    from .sparsity.masks import parse_pattern

    started = time.time()
    out = check_output_dir(out, overwrite)
    cfg = SparsifyConfig.build(config, options)  # the cheap checks come before loading the model
    method, skip = cfg.method, cfg.skip
    parse_pattern(cfg.pattern)
    net, tokenizer = load_model(model)
    report = sparsify_model(net, tokenizer, method, cfg.sparsity, cfg.pattern, _calibration(cfg),
                            DEFAULT_SKIP if skip is None else skip, cfg.options, progress=progress)
    total = report.pop("total")
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, stage="sparsify", method=method,
                       config={**cfg.record(), "model": str(model), "sparsity": total["target_sparsity"],
                               "pattern": total["pattern"], "options": total["options"],
                               "calibration": total["calibration"], "skip": list(DEFAULT_SKIP if skip is None else skip)},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"sparsity": total["sparsity"], "model_sparsity": total["model_sparsity"],
                                "zeros": total["zeros"], "params": total["params"], "left_dense": total["left_dense"],
                                "prune_time_s": total["wall_time_s"], "layers": report},
                       started=started, seed=(total["calibration"] or {}).get("seed"), lineage=lineage.of(model))
    return out


def quantize(model: str | Path = DEFAULT_MODEL, *, out: str | Path, config: QuantizeConfig | dict | None = None,
             overwrite: bool = False, progress: bool = True, **options: Any) -> Path:
    """Quantize a (dense or sparse) model's decoder linears with RTN or GPTQ, keeping its zeros, and
    save it as a compressed-tensors pack-quantized HF directory (transformers loads it; so does
    load_model, with exact QuantParams for the later stages). Options: configs.QuantizeConfig
    (method, bits, group_size, symmetric, calibration, skip, and the method's own options: gptq
    act_order, damp, observer; rtn observer), as `config` or keywords."""
    from .quant import DEFAULT_SKIP, check_bits, quantize_model
    from .quant.formats import write_quantized

    started = time.time()
    out = check_output_dir(out, overwrite)
    cfg = QuantizeConfig.build(config, options)  # the cheap checks come before loading the model
    method = cfg.method
    check_bits(cfg.bits)
    skip = DEFAULT_SKIP if cfg.skip is None else tuple(cfg.skip)
    net, tokenizer = load_model(model)
    report = quantize_model(net, tokenizer, method, cfg.bits, cfg.group_size, cfg.symmetric, _calibration(cfg),
                            skip, progress=progress, options=cfg.options)
    total = report.pop("total")
    config = {k: v for k, v in total.items() if k not in ("layers", "weights", "zeros", "zeros_after",
                                                          "bytes_per_weight", "left_float", "wall_time_s")}
    with atomic_dir(out, overwrite) as tmp:
        write_quantized(net, tmp, tokenizer)
        write_manifest(tmp, stage="quantize", method=method, config={**cfg.record(), "model": str(model), **config, "skip": list(skip)},
                       inputs={"model": model} if Path(str(model)).exists() else None,
                       metrics={"quantized_layers": total["layers"], "weights": total["weights"],
                                "zeros": total["zeros"], "zeros_after": total["zeros_after"],
                                "sparsity": total["zeros_after"] / total["weights"],
                                "bytes_per_weight": total["bytes_per_weight"],
                                "left_float": total["left_float"], "quantize_time_s": total["wall_time_s"],
                                "layers": report},
                       started=started, seed=(total.get("calibration") or {}).get("seed"), lineage=lineage.of(model))
    return out


def inspect(path: str | Path, *, config: InspectConfig | dict | None = None, **options: Any) -> dict:
    """What an artifact directory holds: per-matrix sparsity (models) or per-module ranks (adapters),
    read from its files; for a model also its costs (`costs`, default on: parameters, MACs per token at
    `seq_len`, per-block widths when they differ; nas/cost.py) and, with `latency`, measured CPU
    prefill and decode latency (deploy/speed.py). Options: configs.InspectConfig."""
    from .summary import model_costs, summarize

    cfg = InspectConfig.build(config, options)
    summary = summarize(path)
    if summary["kind"] == "adapter" and cfg.latency:
        raise ConfigError(f"latency is measured on a model, and {path} is an adapter: merge it first "
                          "(slimtune merge) and inspect the merged model, or drop --latency")
    if summary["kind"] == "model" and (cfg.costs or cfg.latency):
        summary.update(model_costs(path, cfg))
    return summary


def search(adapter: str | Path, *, out: str | Path, model: str | Path | None = None,
           enqueue: dict[str, dict] | None = None, config: SearchConfig | dict | None = None, progress: bool = True,
           **options: Any) -> Path:
    """Multi-objective search over the rank groups of an elastic super-adapter (optuna; NSGA-II by default).

    Objectives: accuracy (validation, maximised) or loss (validation completion loss), and params
    (adapter parameters) or nonzero (non-zero base weights + adapter parameters), minimised; with
    elastic widths (LoNAS) also total_params, macs, and latency_prefill / latency_decode (CPU
    milliseconds of the extracted, merged sub-network: nas/latency.py, `latency_*` options). The
    maximal, median and minimal (and, with a training history, most frequently sampled)
    configurations, then `enqueue` ({label: configuration}), are the first trials. `seed` seeds the
    sampler; the validation split is read with the split seed of the adapter's lineage (or
    `split_seed`), and the scored slice joins the search's lineage as a selection set. Trials persist
    in `storage` (default: SQLite in `out`); re-running the same command resumes, and several workers
    given the same storage and `out` share one study and one budget of `trials` completed trials.
    Writes trials.jsonl, pareto.json and pareto.png into `out`. Options: configs.SearchConfig, as
    `config` or keywords.

    `adapter` may also be an EFTNAS supernet (or space): a whole model with elastic widths
    (nas.elastic_model), searched for accuracy vs params or macs; the space's per-budget widths join the
    first trials, and `extract --pick budget=F` takes the best trial within a budget.
    """
    import os
    import socket

    from .nas import ElasticSpace, run_dir
    from .nas.heuristics import first_trials
    from .nas.objective import make_objective
    from .nas.search import Searcher, make_sampler, open_study

    started = time.time()
    cfg = SearchConfig.build(config, options)
    objectives, trials, limit, split_seed, seed = cfg.objectives, cfg.trials, cfg.limit, cfg.split_seed, cfg.seed
    task, sampler, population, study_name, storage = cfg.task, cfg.sampler, cfg.population, cfg.study_name, cfg.storage
    from .nas.elastic_model import is_elastic_model

    elastic = ElasticSpace.load(adapter)
    super_adapter = Artifact.find(adapter)
    whole = is_elastic_model(adapter)  # an EFTNAS supernet (or space): widths of a whole model, no adapter
    if whole:
        from .nas.elastic_model import check_objectives

        check_objectives(adapter, objectives)
    model = model or (adapter if whole else base_of_adapter(adapter))
    from .classify import is_encoder_spec
    from .nas.latency import settings as latency_settings, with_latency
    from .nas.objective import check_measurable

    check_measurable(objectives, elastic, is_encoder_spec(model))
    task = task or (super_adapter.task if super_adapter else None)
    if whole and task is None:  # a space records no task: the one its lineage trained on
        task = next((r["task"] for r in lineage.of(adapter) if r["use"] == "train"), None)
    if task is None and any(o in ("accuracy", "loss") for o in objectives):
        raise ConfigError("accuracy and loss objectives are measured on a task's validation split: pass --task")
    sampler_obj = make_sampler(sampler, seed, population)
    out = Path(out)
    settings = {"adapter": str(adapter), "task": task if isinstance(task, str) or task is None else task.name,
                "objectives": objectives, "sampler": sampler, "population": population, "seed": seed, "limit": limit,
                "study_name": study_name, "split_seed": split_seed, **latency_settings(objectives, cfg)}
    storage = run_dir.prepare(out, settings, storage)
    study = open_study(storage, study_name, objectives, sampler_obj)
    run_dir.save_settings(out, settings)
    slot = run_dir.worker_slot(out, storage)  # workers sharing the study get distinct sampler seeds
    study.sampler = make_sampler(sampler, slot.seed(seed), population)

    history = lineage.of(adapter)
    task_obj = lineage.task_split(task, split_seed, history) if task is not None else None
    if task_obj is not None and not task_obj.validation:
        raise ConfigError(f"task {task_obj.name} has no validation split to search on")
    if task_obj is not None and any(o in ("accuracy", "loss") for o in objectives):
        history = lineage.combine(history, [lineage.record("search", "select", task_obj, "validation",
                                                           task_obj.validation[:limit], out)])
    if whole:
        from .nas.elastic_model import budget_trials, make_elastic_objective, space_record

        net, tokenizer = load_model(adapter)
        measure = make_elastic_objective(net, tokenizer, task_obj, elastic, objectives, limit,
                                         space_record(adapter).get("seq_len") or 128)
        enqueue = {**budget_trials(adapter), **(enqueue or {})}  # every budget of the space has a candidate
    else:
        net, tokenizer = load_adapted(model, adapter)
        measure = make_objective(net, tokenizer, task_obj, elastic, objectives, limit)
    measure = with_latency(measure, net, elastic, objectives, cfg)  # the extracted, merged sub-network, timed
    searcher = Searcher(study, elastic, objectives, measure,
                        trials, apply=lambda c: elastic.apply(net, c), worker=f"{socket.gethostname()}:{os.getpid()}:{slot.name}",
                        reseed=lambda n: make_sampler(sampler, slot.seed(seed) + 1_000_003 * n, population))
    searcher.enqueue(first_trials(elastic, adapter, enqueue))
    searcher.run()

    records, front = run_dir.write_results(out, study, objectives)
    fractions = [1.0 - r["eval_s"] / r["trial_s"] for r in records if r["eval_s"] and r["trial_s"]]
    write_manifest(out, stage="search", method=sampler, config={**cfg.record(), "model": str(model), **settings,
                                                                "storage": storage},
                   inputs={"adapter": adapter},
                   metrics={"completed_trials": len(records), "pareto_size": len(front),
                            "validation_examples": len(task_obj.validation[:limit]) if task_obj is not None else None,
                            "this_worker_trials": len(searcher.ran),
                            "median_overhead_fraction": sorted(fractions)[len(fractions) // 2] if fractions else None},
                   started=started, seed=seed, lineage=history)
    return out


def merge(adapter: str | Path, *, out: str | Path, model: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Fold an adapter into its base model and save the result.

    Float bases give an HF directory (a SparsePEFT adapter keeps every zero of the base). A
    quantization-aware adapter on a packed INT4 base gives a packed INT4 directory on the base's own
    grid (same scales and zero points). A plain adapter on a quantized base leaves the grid, so the
    result is a float (dequantized + update) directory: re-quantize it with `slimtune quantize`.
    """
    from .nas.lonas import shrink_merged
    from .quant.formats import write_quantized
    from .quant.linear import quant_linears
    from .widths_io import write_widths

    started = time.time()
    out = check_output_dir(out, overwrite)
    model = model or base_of_adapter(adapter)
    net, tokenizer = load_adapted(model, adapter)
    quant_aware = any(getattr(l, "quant_aware", False) for l in adapter_layers(net).values())
    merge_adapters(net)
    net, shapes, heads = shrink_merged(net, adapter)  # an extracted LoNAS sub-adapter: the physically smaller model
    quantized = bool(quant_linears(net))
    if quantized and not quant_aware:
        from .quant.linear import dequantize_all

        dequantize_all(net)
        quantized = False
    with atomic_dir(out, overwrite) as tmp:
        if quantized:
            write_quantized(net, tmp, tokenizer)
        else:
            net.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if shapes:
            write_widths(tmp, shapes, heads)
        write_manifest(tmp, stage="merge", method="quantized" if quantized else "float",
                       config={"model": str(model), "adapter": str(adapter), "version": CONFIG_VERSION},
                       inputs={"adapter": adapter}, started=started,
                       metrics={"parameters": sum(p.numel() for p in net.parameters()),
                                "per_block_widths": bool(shapes)},
                       lineage=lineage.combine(lineage.of(model), lineage.of(adapter)))
    return out


def compare(model_a: str | Path, model_b: str | Path, *, adapter_a: str | Path | None = None,
            adapter_b: str | Path | None = None, out: str | Path | None = None,
            config: CompareConfig | dict | None = None, progress: bool = True, **options: Any) -> dict:
    """Evaluate two models (each optionally with an adapter) on the same examples and the paired
    difference A - B of their accuracy with its bootstrap interval (for a suite: per member and on the
    macro average). The split seed defaults to the one both lineages used for the task (else 0); both
    models are held-out-checked against their own lineage as in `evaluate`. Options:
    configs.CompareConfig, as `config` or keywords."""
    from .evaluate.compare import headline, paired_difference

    cfg = CompareConfig.build(config, options)
    task, split, limit, split_seed = cfg.task, cfg.split, cfg.limit, cfg.split_seed
    check_result_file(out)
    history = lineage.combine(*(lineage.of(p) for p in (model_a, model_b, adapter_a, adapter_b) if p is not None))
    task_obj = lineage.task_split(task, split_seed, history)  # one Task object: the same examples for both
    results = [evaluate(m, task=task_obj, adapter=ad, split=split, limit=limit, batch_size=cfg.batch_size,
                        allow_overlap=cfg.allow_overlap, progress=progress)
               for m, ad in ((model_a, adapter_a), (model_b, adapter_b))]
    members = None
    if task_obj.members:
        examples = task_obj.split(split)[:limit]
        members = [ex.meta.get("task", task_obj.spec) for ex in examples]
    result = {"task": task_obj.name, "task_spec": task_obj.spec, "split": split, "split_seed": task_obj.split_seed,
              "n": results[0]["n"], "metric": headline(results[0]), "a": results[0], "b": results[1],
              "difference": paired_difference(results[0], results[1], members, task_obj.members)}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    return result
