"""Recipes: a YAML file lists the stages of a run; `slimtune run recipe.yaml` runs them in order.

    model: smollm2-135m            # the input of the first stage
    task: polarity                 # default task of finetune / extract / search / evaluate
    stages:
      - {name: sparse, stage: sparsify, method: wanda, sparsity: 0.5}
      - {name: int4, stage: quantize, method: gptq, bits: 4, group_size: 64, symmetric: false}
      - {name: super, stage: finetune, adapter: nls, rank_space: [32, 24, 16], sparse_adapter: true,
         quant_aware: true, train: {epochs: 4, learning_rate: 5.0e-4}}
      - {name: sub, stage: extract, select: median}
      - {name: final, stage: merge}
      - {name: eval, stage: evaluate, models: [model, int4, final]}

Each stage writes its artifact to <run dir>/<name>. A stage's input is the stage named by `input`,
or else the latest stage before it that makes what it needs (a model for sparsify, quantize and
finetune; a super-adapter or search for extract; an adapter for merge; a model for export, whose
compressed-tensors output is again a model and whose gguf file is read by no stage). EFTNAS (examples/recipes/
eftnas.yaml): a fully fine-tuned classifier (finetune adapter full) is a model; importance and space
read a model (space: optionally an earlier importance stage by `importance`), supernet reads a space
(and a teacher stage by `teacher`, default the space's own model); search reads a super-adapter or a
supernet, and extract from a supernet search makes a model. The recipe is validated as a
whole before any stage runs. A stage whose artifact is complete and whose fingerprint (its config
and its inputs' fingerprints) is unchanged is skipped; an interrupted stage resumes (fine-tuning from
its last checkpoint, search from its study); a changed stage is re-run, and so is everything after
it that depends on it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .artifacts import RECIPE_FILE, STATE_DIR, write_json_atomic
from .configs import (STAGE_CONFIGS, Config, EvaluateConfig, ExportConfig, ExtractConfig, FinetuneConfig,
                      ImportanceConfig, MergeConfig, QuantizeConfig, SearchConfig, SpaceConfig, SparsifyConfig, SupernetConfig, describe)
from .errors import ArtifactError, ConfigError
from .guards import NAME_RULE, check_name



class _Stage(BaseModel):
    """A recipe stage: its name, its input, and the stage's config (configs.py) fields."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(description=NAME_RULE)
    input: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_name(name)

    def config(self, recipe: "Recipe") -> Config:
        """The stage's config; task and split seed default to the recipe's."""
        cls = STAGE_CONFIGS[self.stage]
        values = {k: getattr(self, k) for k in cls.model_fields}
        if "task" in values and values["task"] is None:
            values["task"] = recipe.task
        if "split_seed" in values and "split_seed" not in self.model_fields_set:
            values["split_seed"] = recipe.split_seed
        return cls(**values)

    def extra_inputs(self) -> list[str]:
        """Earlier stages this one reads besides its input (EFTNAS: importance, teacher)."""
        return []


class SparsifyStage(_Stage, SparsifyConfig):
    stage: Literal["sparsify"]


class QuantizeStage(_Stage, QuantizeConfig):
    stage: Literal["quantize"]


class FinetuneStage(_Stage, FinetuneConfig):
    stage: Literal["finetune"]


class ExtractStage(_Stage, ExtractConfig):
    stage: Literal["extract"]


class SearchStage(_Stage, SearchConfig):
    stage: Literal["search"]


class MergeStage(_Stage, MergeConfig):
    stage: Literal["merge"]


class EvaluateStage(_Stage, EvaluateConfig):
    """A recipe's evaluate stage scores several models; unlike `slimtune evaluate` it measures
    perplexity on 8 windows of the Wikipedia text unless told otherwise, and its task defaults to the
    recipe's."""

    stage: Literal["evaluate"]
    models: list[str] = Field(default_factory=lambda: ["model"], description="'model' or names of earlier model stages")
    task: str | None = None
    perplexity_text: str | None = "wiki"
    max_windows: int | None = Field(8, ge=1)

    @model_validator(mode="after")
    def _something(self):
        return self  # the task defaults to the recipe's


class ExportStage(_Stage, ExportConfig):
    """compressed-tensors re-writes a packed model with a half-precision embedding / LM head, compact in slimtune's
    smallest form (both: a model that later stages evaluate); gguf writes a file for llama.cpp (read by no later
    stage)."""

    stage: Literal["export"]


class ImportanceStage(_Stage, ImportanceConfig):
    stage: Literal["importance"]


class SpaceStage(_Stage, SpaceConfig):
    stage: Literal["space"]
    importance: str | None = Field(None, description="an earlier importance stage (default: the model's own "
                                                     "importance.json, from finetune importance: true)")

    def extra_inputs(self) -> list[str]:
        return [self.importance] if self.importance else []


class SupernetStage(_Stage, SupernetConfig):
    stage: Literal["supernet"]
    teacher: str | None = Field(None, description="an earlier stage making the teacher model (default: the space's "
                                                  "own model, the reordered teacher)")

    def extra_inputs(self) -> list[str]:
        return [self.teacher] if self.teacher else []


StageConfig = Annotated[Union[SparsifyStage, QuantizeStage, FinetuneStage, ExtractStage, SearchStage, MergeStage,
                              EvaluateStage, ExportStage, ImportanceStage, SpaceStage, SupernetStage], Field(discriminator="stage")]
MAKES = {"sparsify": "model", "quantize": "model", "merge": "model", "finetune": "adapter", "extract": "adapter",
         "search": "search", "evaluate": "evaluation", "importance": "importance", "space": "space",
         "supernet": "supernet", "export": "model"}
# what each stage reads, in order of preference when its input is not named
NEEDS = {"sparsify": ("model",), "quantize": ("model",), "finetune": ("model",), "extract": ("search", "adapter", "supernet"),
         "search": ("adapter", "supernet"), "merge": ("adapter",), "evaluate": (), "importance": ("model",),
         "space": ("model",), "supernet": ("space",), "export": ("model",)}


def _makes(st, seen: dict, inputs: dict) -> str:
    """What a stage makes: MAKES, except a full fine-tune (every weight, no adapter: a classifier or a causal
    LM) and an extract from a supernet search (a physically smaller model) make models; a gguf export makes
    a file."""
    if st.stage == "export" and st.format == "gguf":
        return "gguf file"
    if st.stage == "finetune" and st.adapter == "full":
        return "model"
    if st.stage == "extract" and _derives_from(inputs.get(st.name), "supernet", seen, inputs):
        return "model"
    return MAKES[st.stage]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str = "smollm2-135m"
    task: str = "polarity"
    split_seed: int = Field(0, description="seed of every task's train/validation/test split (not a training seed)")
    stages: list[StageConfig] = Field(min_length=1)


def _describe(e: ValidationError, source: str) -> str:
    return describe(e, f"recipe {source}", drop=tuple(MAKES))  # the union's tag is not part of the path


def load_recipe(source: str | Path | dict, overrides: dict | None = None) -> Recipe:
    """Parse and validate a recipe (YAML file or dict); `overrides` are merged into its top level."""
    name = str(source) if not isinstance(source, dict) else "<dict>"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe {path} not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name} must be a mapping with 'stages' (and optionally 'model', 'task')")
    data = {**data, **(overrides or {})}
    try:
        recipe = Recipe(**data)
    except ValidationError as e:
        raise ConfigError(_describe(e, name)) from e
    plan(recipe)  # consistency of the whole recipe, before any work
    return recipe


def plan(recipe: Recipe) -> dict[str, str]:
    """{stage name: input name ('model' for the recipe's model)}; errors name the stage's path."""
    inputs: dict[str, str] = {}
    seen: dict[str, BaseModel] = {}
    latest = {"model": "model"}
    for i, st in enumerate(recipe.stages):
        where = f"stages[{i}] ({st.name})"
        if st.name in seen or st.name == "model":
            raise ConfigError(f"{where}.name: stage name {st.name!r} is used twice (or is the reserved 'model')")
        kinds = NEEDS[st.stage]
        if kinds:
            source = st.input
            if source is None:
                source = next((latest[k] for k in kinds if k in latest), None)
                if source is None:
                    names = {"adapter": "finetune"}
                    raise ConfigError(f"{where}: a {st.stage} stage needs an earlier "
                                      f"{' or '.join(names.get(k, k) for k in kinds)} stage")
            elif source != "model" and source not in seen:
                raise ConfigError(f"{where}.input: {source!r} is not an earlier stage (earlier: "
                                  f"{', '.join(['model', *seen]) })")
            made = "model" if source == "model" else _makes(seen[source], seen, inputs)
            if made not in kinds:
                raise ConfigError(f"{where}.input: {source!r} makes a {made}, a {st.stage} stage reads a "
                                  f"{' or '.join(kinds)}")
            inputs[st.name] = source
        for ref, kind in ((getattr(st, "importance", None), "importance"), (getattr(st, "teacher", None), "model")):
            if isinstance(ref, str) and (ref not in seen and ref != "model"
                                         or kind != ("model" if ref == "model" else _makes(seen[ref], seen, inputs))):
                raise ConfigError(f"{where}: {ref!r} is not an earlier stage that makes a{'n' * (kind[0] == 'i')} "
                                  f"{kind}")
        if st.stage == "finetune" and st.quant_aware and not (
                _derives_from(source, "quantize", seen, inputs) if source != "model" else _model_is_quantized(recipe.model)):
            raise ConfigError(f"{where}.quant_aware: its input {source!r} is not quantized; add a quantize stage "
                              "before it (or set quant_aware: false)")
        if st.stage == "finetune" and st.sparse_adapter and source != "model" \
                and not _derives_from(source, "sparsify", seen, inputs):
            raise ConfigError(f"{where}.sparse_adapter: its input {source!r} is not a sparsify stage's output or "
                              "derived from one; add a sparsify stage before it (or set sparse_adapter: false)")
        if st.stage in ("extract", "search"):
            adapter = seen.get(inputs[st.name])
            base = adapter if adapter is None or adapter.stage != "search" else seen.get(inputs[adapter.name])
            if base is not None and base.stage == "finetune" and base.adapter != "nls":
                raise ConfigError(f"{where}: {st.stage} needs an elastic super-adapter; set adapter: nls in stage "
                                  f"{base.name!r}")
        if st.stage == "export" and st.format in ("compressed-tensors", "compact") and not (
                _derives_from(source, "quantize", seen, inputs) if source != "model" else _model_is_quantized(recipe.model)):
            raise ConfigError(f"{where}.format: {st.format} re-writes a packed INT4 model and its input "
                              f"{source!r} is not quantized; add a quantize stage before it (or use format: gguf)")
        if st.stage == "extract":
            from_search = seen[inputs[st.name]].stage == "search"
            if st.pick is not None and not from_search:
                raise ConfigError(f"{where}.pick: picks a searched trial; its input must be a search stage")
        if st.stage == "evaluate":
            for m in st.models:
                if m != "model" and (m not in seen or _makes(seen[m], seen, inputs) != "model"):
                    raise ConfigError(f"{where}.models: {m!r} is not 'model' or an earlier stage that makes a model")
        seen[st.name] = st
        if MAKES[st.stage] != "evaluation":
            latest[_makes(st, seen, inputs)] = st.name
    return inputs


def _derives_from(source: str, kind: str, seen: dict, inputs: dict) -> bool:
    """Whether `source` is a `kind` stage or is made (through its inputs) from one."""
    while source is not None and source in seen:
        if seen[source].stage == kind:
            return True
        source = inputs.get(source)
    return False


def _model_is_quantized(model: str) -> bool:
    from .models import is_packed_quantized, resolve_model

    try:
        return is_packed_quantized(resolve_model(model))
    except Exception:  # an unresolvable model is reported by the first stage that loads it
        return False


def _fingerprint(stage: BaseModel, recipe: Recipe, input_prints: list[str]) -> str:
    payload = json.dumps({"stage": stage.model_dump(), "model": recipe.model, "task": recipe.task,
                          "split_seed": recipe.split_seed, "inputs": input_prints}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_recipe(recipe: Recipe | str | Path, run_dir: str | Path, *, overrides: dict | None = None,
               progress: bool = True, log=print) -> dict[str, Path]:
    """Run every stage that is not complete with the same fingerprint; returns {stage: artifact path}.
    One process at a time: a second one on the same run directory stops at once (locking.run_lock)."""
    from .locking import run_lock

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    inputs = plan(recipe)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ArtifactError(f"run directory {run_dir} exists and is not a directory")
    (run_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir / STATE_DIR):
        return _run_stages(recipe, inputs, run_dir, progress, log)


def _damage(out: Path) -> str | None:
    """Why a stage's finished artifact cannot be skipped (None: it is complete and undamaged)."""
    from .artifacts import check_artifact

    if not out.is_dir():
        return "its directory is missing"
    try:
        check_artifact(out)
    except (ArtifactError, OSError) as e:
        return str(e)
    return None


def _clean(run_dir: Path, names) -> None:
    """Left-overs of killed runs: temporary and replaced stage directories, half-written state files."""
    from .artifacts import clean_leftovers

    for name in names:
        clean_leftovers(run_dir / name)
    for tmp in (run_dir / STATE_DIR).glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def _run_stages(recipe: Recipe, inputs: dict, run_dir: Path, progress: bool, log) -> dict[str, Path]:
    from . import api
    from .guards import inside, remove_inside

    _clean(run_dir, [st.name for st in recipe.stages])
    write_json_atomic(run_dir / STATE_DIR / RECIPE_FILE, recipe.model_dump())
    paths: dict[str, Path] = {"model": Path(recipe.model) if Path(recipe.model).exists() else recipe.model}
    prints: dict[str, str] = {"model": recipe.model}
    for i, st in enumerate(recipe.stages):
        deps = ([inputs[st.name]] if st.name in inputs else []) + st.extra_inputs()
        if st.stage == "evaluate":
            deps = list(st.models)
        fp = _fingerprint(st, recipe, [prints[d] for d in deps])
        prints[st.name] = fp
        out = inside(run_dir, run_dir / st.name)
        paths[st.name] = out
        state_path = run_dir / STATE_DIR / f"{st.name}.json"
        try:
            state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        except ValueError:  # a damaged state file: the stage runs again
            state = {}
        same = state.get("fingerprint") == fp
        tag = f"[{i + 1}/{len(recipe.stages)}] {st.stage} {st.name}"
        damage = _damage(out) if same and state.get("done") else None
        if same and state.get("done") and damage is None:
            log(f"{tag}: complete, skipped")
            continue
        if damage is not None:  # this run wrote it (its state says so), so it may replace it
            log(f"{tag}: damaged ({damage}); running it again")
            remove_inside(run_dir, out)
        if not same:  # new or changed: nothing of an earlier attempt may be resumed
            remove_inside(run_dir, run_dir / f".{st.name}.checkpoints")
            if st.stage == "search" and state and out.is_dir():
                remove_inside(run_dir, out)
        log(f"{tag}: {'resuming' if same and damage is None else 'running'}")
        write_json_atomic(state_path, {"fingerprint": fp, "done": False, "stage": st.model_dump()})
        t0 = time.time()
        src = paths[deps[0]] if deps else None
        _run_stage(api, st, recipe, src, out, paths, overwrite=st.stage != "search", progress=progress)
        write_json_atomic(state_path, {"fingerprint": fp, "done": True, "stage": st.model_dump(),
                                       "seconds": round(time.time() - t0, 1)})
        log(f"{tag}: done in {time.time() - t0:.0f} s")
    from .report import build_report

    log(f"report: {build_report(run_dir)}")
    return paths


def _run_stage(api, st, recipe: Recipe, src, out: Path, paths: dict, overwrite: bool, progress: bool) -> None:
    config = st.config(recipe)
    if st.stage in ("sparsify", "quantize", "finetune"):
        getattr(api, st.stage)(src, out=out, config=config, overwrite=overwrite, progress=progress)
    elif st.stage == "extract":
        from .nas.run_dir import SEARCH_CONFIG

        if (Path(src) / SEARCH_CONFIG).is_file():
            api.extract(out=out, from_search=src, config=config, overwrite=overwrite, progress=progress)
        else:
            api.extract(src, out=out, config=config, overwrite=overwrite, progress=progress)
    elif st.stage == "search":
        api.search(src, out=out, config=config, progress=progress)
    elif st.stage == "merge":
        api.merge(src, out=out, overwrite=overwrite)
    elif st.stage == "importance":
        api.importance(src, out=out, config=config, overwrite=overwrite, progress=progress)
    elif st.stage == "space":
        api.space(src, out=out, importance=paths[st.importance] if st.importance else None, config=config,
                  overwrite=overwrite, progress=progress)
    elif st.stage == "supernet":
        api.supernet(src, out=out, teacher=paths[st.teacher] if st.teacher else None, config=config,
                     overwrite=overwrite, progress=progress)
    elif st.stage == "export":
        from .deploy.export import export

        export(src, out=out, config=config, overwrite=overwrite)
    elif st.stage == "evaluate":
        from .artifacts import atomic_dir, write_manifest
        from .evaluate import PER_EXAMPLE

        started = time.time()
        results = {}
        for m in st.models:
            # drift=False: the stage scores the bases too, and the report divides one by the other
            results[m] = api.evaluate(paths[m], config=config, drift=False, progress=progress)
        with atomic_dir(out, overwrite) as tmp:
            write_json_atomic(tmp / "results.json", results)
            write_manifest(tmp, stage="evaluate", method="evaluate", config=st.model_dump(),
                           metrics={m: {k: v for k, v in r.items() if k not in PER_EXAMPLE}
                                    for m, r in results.items()}, started=started)
