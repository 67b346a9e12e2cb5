"""One pydantic config per stage: the one place where a stage's options, their defaults, checks and
help texts are defined. The Python API validates its keyword arguments through them, the CLI is
generated from their fields (cli.py), a recipe's stages are these configs plus a name and an input
(recipe.py), and the manifest stores the config with CONFIG_VERSION.

What a stage reads and writes (model, adapter, out, overwrite) is not an option: those are the
stage's arguments. A compression method's own options are a pydantic model that the method
registers (compress.Method.options); `options` is checked against the chosen method's model when
the config is built, so a recipe with a typo fails before its first stage.

Field metadata for the CLI (json_schema_extra): "flag" (the option's flags, default --field-name),
"cli": False (API and recipe only), "off" (a flag that sets a boolean to false). A compression
stage's `method` offers its registry's methods at the time the CLI is built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .compress import DEFAULT_CALIBRATION, Registry, check_options
from .config_base import CONFIG_VERSION, SPLIT_SEED_HELP, Config, _cli, describe  # noqa: F401 (public here)
from .nas.search import OBJECTIVES, SAMPLERS
from .nas.lonas import WIDTH_KINDS
from .nas.reorder import ORDERS
from .nas.sampling import SAMPLERS as SUBNET_SAMPLERS, TARGETED_SAMPLERS
from .nas.space import PRESETS
from .quant import QUANTIZERS
from .quant.params import DEFAULT_BITS, DEFAULT_GROUP_SIZE
from .sparsity import SPARSIFIERS
from .data import DEFAULT_TASK, Task
from .diagnose.intruders import DEFAULT_EPSILON, DEFAULT_K
from .distill import DistillOptions
from .train import TrainConfig
from .adapters.adalora import AdaLoraOptions
from .adapters.paca import PacaOptions

SPLITS = ("train", "validation", "test")
ADAPTERS = ("lora", "nls", "adalora", "paca", "full")
QA_WEIGHTS = ("auto", "float", "quantized")


# ---- compression -----------------------------------------------------------------------------

class Calibration(Config):
    """Calibration text for methods that run layer by layer (defaults: compress.DEFAULT_CALIBRATION)."""

    source: str = Field(DEFAULT_CALIBRATION["source"], description="calibration text: 'news', 'wiki' or a UTF-8 file",
                        json_schema_extra=_cli("--calibration"))
    n_samples: int = Field(DEFAULT_CALIBRATION["n_samples"], ge=1, description="calibration sequences",
                           json_schema_extra=_cli("--samples"))
    seq_len: int = Field(DEFAULT_CALIBRATION["seq_len"], ge=1, description="tokens per calibration sequence")
    seed: int = Field(DEFAULT_CALIBRATION["seed"], ge=0, description="seed for picking calibration windows")
    batch_size: int = Field(DEFAULT_CALIBRATION["batch_size"], ge=1,
                            description="calibration sequences per forward pass; lower it to save memory (all "
                                        "samples in one batch run every block once)",
                            json_schema_extra=_cli("--calibration-batch"))


class _Compress(Config):
    registry: ClassVar[Registry]  # the stage's methods

    calibration: Calibration | None = Field(None, description="calibration of layer-by-layer methods")
    skip: list[str] | None = Field(None, description="module-name patterns to leave as they are (default: the LM "
                                                     "head)")
    options: dict[str, Any] | None = Field(None, description="the method's own options")

    @model_validator(mode="after")
    def _method_options(self):
        spec = self.registry.lookup(self.method)
        if self.calibration is not None and not spec.calibrated:
            raise ValueError(f"method {self.method!r} takes no calibration data")
        check_options(spec, self.options)
        return self


class SparsifyConfig(_Compress):
    registry = SPARSIFIERS

    method: str = Field("wanda", description="pruning method (sparsity.SPARSIFIERS)")
    sparsity: float | None = Field(None, ge=0, lt=1, description="fraction of weights to zero, in [0, 1) (0.5 "
                                                                 "unless an N:M pattern implies it)")
    pattern: str = Field("unstructured", description="'unstructured' (exact count per row) or N:M, e.g. 2:4 (keep "
                                                     "N of every M inputs)")


class QuantizeConfig(_Compress):
    registry = QUANTIZERS

    method: str = Field("gptq", description="quantization method (quant.QUANTIZERS)")
    bits: int = Field(DEFAULT_BITS, description="bits per weight: 2, 3, 4 or 8")
    group_size: int = Field(DEFAULT_GROUP_SIZE, description="consecutive inputs sharing a scale and zero point, or "
                                                            "-1 for one group per output row")
    symmetric: bool = Field(True, description="symmetric grid: zero point 2^(bits-1), scale from max|w| (--asym: "
                                              "min-max scale with an integer zero point per group)",
                            json_schema_extra=_cli("--sym", off="--asym"))

    @model_validator(mode="before")
    @classmethod
    def _knobs_are_options(cls, data):
        """act_order, damp and observer are GPTQ's / RTN's own options; top-level keys are accepted."""
        if isinstance(data, dict) and any(k in data for k in ("act_order", "damp", "observer")):
            data = dict(data)
            options = dict(data.get("options") or {})
            for k in ("act_order", "damp", "observer"):
                if data.get(k) is not None:
                    options[k] = data[k]
                data.pop(k, None)
            data["options"] = options or None
        return data


# ---- adapters ----------------------------------------------------------------------------------

class FinetuneConfig(Config):
    task: str | Task | None = Field(None, description="task: a builtin name (polarity, gsm_symbolic, bigbench:<name>), a "
                                               ".jsonl/.csv file, or hf:<dataset> (default: the recipe's, else "
                                               "polarity)")
    adapter: Literal[ADAPTERS] = Field("lora", description="lora: one fixed rank; nls: an elastic super-adapter whose "
                                                           "rank groups are sampled from the rank space once per "
                                                           "optimizer step (Shears/SQFT); adalora: SVD-form "
                                                           "adapters pruned to a rank budget (AdaLoRA); paca: "
                                                           "selected input columns trained in place (PaCA); full: every "
                                                           "weight (encoder classifiers and causal LMs: EFTNAS' "
                                                           "teacher; a sparse base keeps its zeros)")
    targets: list[str] | None = Field(None, description="module-name patterns to adapt, e.g. q_proj,v_proj (suffix "
                                                        "match, glob, or re:<regex> on the full name; default: all "
                                                        "attention and MLP projections)")
    rank: int | None = Field(None, ge=1, description="LoRA rank r, the maximal rank for nls (default 16 for lora, 32 "
                                                     "for nls)")
    rank_space: list[int] | None = Field(None, description="nls: descending ranks, the first the maximal one "
                                                           "(default r,3r/4,r/2)")
    groups: Literal[PRESETS] = Field("shears", description="nls: modules sharing a rank: shears = per block "
                                                                 "[q,k,v], [gate,up], [down]; block = one rank per "
                                                                 "block; module = every module alone")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r (alpha/r_max for nls)")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout on the adapter's input (default 0.05; 0 "
                                                                "with sparse or quantization-aware adapters)")
    sparse_adapter: bool = Field(False, description="SparsePEFT: mask the update by the base's zeros, so the merged "
                                                    "model keeps them (needs a sparse base)")
    quant_aware: bool = Field(False, description="QA-SparsePEFT: train through the quantized base's own grid, so the "
                                                 "merge lands on it exactly (needs a `slimtune quantize` base)")
    qa_weights: Literal[QA_WEIGHTS] = Field("auto", description="quant-aware: merge the update into the float weights "
                                                                "before quantization (float, SQFT's choice) or into "
                                                                "the dequantized base (quantized); auto: float when "
                                                                "the float model is known")
    float_base: str | None = Field(None, description="qa_weights float: the float model the base was quantized from "
                                                     "(default: the one the base's manifest records)")
    split_seed: int = Field(0, description="seed of the task's train/validation/test split, separate from the "
                                           "training seed")
    adalora: AdaLoraOptions = Field(default_factory=AdaLoraOptions, description="adalora: rank allocation")
    paca: PacaOptions = Field(default_factory=PacaOptions, description="paca: column selection")
    widths: list[Literal[WIDTH_KINDS]] | None = Field(None, description="nls, LoNAS: make base widths elastic too, "
                                                      "bound to the same modules' adapters: mlp (intermediate "
                                                      "channels), heads (attention heads in whole KV groups)")
    mlp_fractions: list[float] | None = Field(None, description="widths mlp: fractions of the intermediate size "
                                                                "(default 1,0.875,0.75,0.625,0.5, LoNAS')")
    head_fractions: list[float] | None = Field(None, description="widths heads: fractions of the KV groups (default "
                                                                 "every group count from all down to half)")
    width_order: Literal[ORDERS] = Field("original", description="widths: keep the channels/heads in their order "
                                                                  "(original, LoNAS') or move the largest-norm "
                                                                  "ones first (magnitude); outputs are unchanged")
    sampler: Literal[tuple(SUBNET_SAMPLERS)] = Field("uniform", description="nls: configurations per optimizer step: "
                                                                     "uniform (one random) or sandwich (maximal, "
                                                                     "random, minimal)")
    distill: DistillOptions = Field(default_factory=DistillOptions, description="distillation from a teacher")
    importance: bool = Field(False, description="write importance.json, first-order scores of heads and FFN "
                                                "neurons (EFTNAS), summed over training (adapter full), or for an "
                                                "encoder with lora over the training split after the merge")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation settings")

    @model_validator(mode="after")
    def _consistent(self):
        for kind, options, default in (("adalora", self.adalora, AdaLoraOptions()), ("paca", self.paca, PacaOptions())):
            if self.adapter != kind and options != default:
                raise ValueError(f"{kind} options only apply to adapter {kind} (adapter is {self.adapter})")
        if self.adapter == "adalora" and self.rank is not None:
            raise ValueError("adalora's ranks are init_r (start) and target_r (average at the end), not rank")
        if self.adapter == "paca" and (self.quant_aware or self.dropout):
            raise ValueError("paca trains base columns in place: no dropout, and on an INT4 base its merge always "
                             "lands on the grid (drop quant_aware)")
        if (self.qa_weights != "auto" or self.float_base is not None) and not self.quant_aware:
            raise ValueError("qa_weights / float_base only apply to quantization-aware adapters (quant_aware)")
        if self.adapter == "lora" and self.rank_space is not None:
            raise ValueError("a rank space makes the adapter elastic: use adapter nls with rank_space")
        if self.distill != DistillOptions() and (self.adapter not in ("full", "lora", "nls") or not self.distill.teacher):
            raise ValueError("distillation options need a teacher and adapter lora or nls (or full, on an encoder)")
        if self.adapter != "nls" and (self.widths or self.sampler != "uniform"):
            raise ValueError("elastic widths and the sampler belong to an elastic super-network: use adapter nls")
        if (self.mlp_fractions and "mlp" not in (self.widths or [])) or (
                self.head_fractions and "heads" not in (self.widths or [])):
            raise ValueError("mlp_fractions / head_fractions need widths mlp / heads")
        for f in (self.mlp_fractions or []) + (self.head_fractions or []):
            if not 0 < f <= 1:
                raise ValueError(f"width fractions are in (0, 1], got {f}")
        if self.width_order != "original" and not self.widths:
            raise ValueError("width_order reorders elastic widths: give widths")
        if self.widths and self.quant_aware:
            raise ValueError("elastic widths need a float (dense or sparse) base; a quantization-aware adapter's "
                             "base is quantized (slicing input columns would cut its quantization groups)")
        if (self.sparse_adapter or self.quant_aware) and self.dropout:
            raise ValueError("sparse and quantization-aware adapters apply their update to the weight, which leaves "
                             f"no adapter input to drop out: set dropout 0 (got {self.dropout})")
        return self


class ExtractConfig(Config):
    select: str | dict[str, int] = Field("median", description="maximal | median | minimal | nncf (the best on the "
                                                               "task's VALIDATION split of the median, the most "
                                                               "frequently sampled and the 5 lowest-loss training "
                                                               "configurations) | a JSON object {group: rank}, groups "
                                                               "as in elastic_config.json")
    pick: str | None = Field(None, description="from a search: best-accuracy | smallest | knee (of the Pareto "
                                               "front) | trial=N | budget=F (the most accurate trial costing at most "
                                               "F of the maximal one, +1% (budget=F:T: tolerance T); accuracies within "
                                               "one standard error of the best tie, the costlier wins) (default knee)")
    task: str | Task | None = Field(None, description="nncf: task whose validation split scores the candidates (default: "
                                               "the training task)")
    limit: int | None = Field(None, ge=1, description="nncf: score on the first N validation examples")
    split_seed: int | None = Field(None, description="nncf: " + SPLIT_SEED_HELP)


class SearchConfig(Config):
    task: str | Task | None = Field(None, description="task whose validation split is scored (default: the super-adapter's "
                                               "training task)")
    objectives: list[Literal[tuple(OBJECTIVES)]] = Field(["accuracy", "params"], min_length=1,
                                                  description="accuracy or loss, and params (adapter parameters), "
                                                              "nonzero (non-zero base weights + adapter parameters), "
                                                              "total_params (base + adapter parameters of the "
                                                              "sub-network) or macs (linear MACs per token, merged), "
                                                              "latency_prefill / latency_decode (measured CPU ms of the "
                                                              "extracted, merged sub-network; elastic widths only; "
                                                              "decode: causal LMs); an EFTNAS supernet: accuracy, "
                                                              "params, macs (with attention at the space's sequence "
                                                              "length) or latency_prefill / latency_decode")
    trials: int = Field(30, ge=1, description="completed trials in all, over all workers")
    storage: str | None = Field(None, description="optuna storage URL shared by workers, e.g. sqlite:///runs/s.db "
                                                  "(default: sqlite in the run directory)")
    study_name: str = Field("slimtune-search", description="study name inside the storage")
    sampler: Literal[SAMPLERS] = Field("nsga2", description="optuna sampler")
    population: int | None = Field(None, ge=2, description="NSGA-II/III population size (default 16)")
    seed: int = Field(0, description="sampler seed")
    limit: int | None = Field(None, ge=1, description="score on the first N validation examples (the same slice "
                                                      "every trial)")
    split_seed: int | None = Field(None, description=SPLIT_SEED_HELP)
    latency_seq_len: int = Field(128, ge=1, description="latency objectives: prompt tokens of the timed prefill "
                                                        "(batch 1)")
    latency_decode_tokens: int = Field(8, ge=1, description="latency_decode: greedy tokens timed after the prompt")
    latency_repeats: int = Field(3, ge=1, description="latency objectives: timed repeats after a warm-up (the median "
                                                      "is recorded)")
    latency_threads: int | None = Field(None, ge=1, description="latency objectives: CPU threads (default: torch's)")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, objectives):
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objective listed twice in {objectives}")
        return objectives

    @model_validator(mode="after")
    def _latency(self):
        changed = sorted(f for f, info in type(self).model_fields.items()
                         if f.startswith("latency_") and getattr(self, f) != info.default)
        if changed and not any(o.startswith("latency_") for o in self.objectives):
            raise ValueError(f"{', '.join(changed)} set the latency objectives' measurement: add latency_prefill or "
                             "latency_decode to objectives")
        return self


class MergeConfig(Config):
    """Merge has no options: what it does follows from the adapter and its base."""


class RefactorConfig(Config):
    """SVD re-factorization of an adapter (adapters/svd.py): exactly one of rank and budget."""

    rank: int | dict[str, int] | None = Field(None, description="the same rank in every module (capped at the "
                                                                "module's rank), or {module: rank} (API)")
    budget: int | None = Field(None, ge=1, description="adapter parameters in all: per-module ranks chosen greedily "
                                                       "by singular-value energy per parameter (at least 1 per module)")

    @model_validator(mode="after")
    def _one_size(self):
        if (self.rank is None) == (self.budget is None):
            raise ValueError("give either a rank (uniform, or per module) or a parameter budget, not "
                             + ("both" if self.rank is not None else "neither"))
        return self


class IntrudersConfig(Config):
    """Intruder dimensions (diagnose/intruders.py)."""

    k: int = Field(DEFAULT_K, ge=1, description="top singular vectors of each tuned weight to test")
    epsilon: float = Field(DEFAULT_EPSILON, gt=0, lt=1, description="cosine-similarity threshold in (0, 1)")
    targets: list[str] | None = Field(None, description="module patterns to diagnose (default: all adapted)")


class ExportConfig(Config):
    """Export of a model artifact (deploy/export.py)."""

    format: Literal["gguf", "compressed-tensors", "compact"] = Field(
        "gguf", description="gguf: OUT/model.gguf for llama.cpp; compressed-tensors: a packed model written again "
                            "with smaller embeddings; compact: slimtune's smallest form (non-zero INT4 codes behind a "
                            "bitmask, quantized embeddings), read by slimtune only")
    float_type: Literal["f16", "bf16", "q8_0", "f32"] = Field("f16", description="gguf: type of float (not "
                                                                                 "quantized) linear weights")
    embed_type: Literal["q8_0", "f16", "bf16", "f32"] = Field("q8_0", description="gguf: type of the token "
                                                                                  "embedding / untied LM head (norms "
                                                                                  "stay f32)")
    requantize: Literal["q4_0", "q4_1", "q8_0"] | None = Field(None, description="gguf: re-quantize quantized layers "
                                                                                 "whose grid GGUF cannot carry (off "
                                                                                 "by default)")
    tokenizer_pre: str | None = Field(None, description="gguf: llama.cpp pre-tokenizer name (default: detected)")
    embeddings: Literal["float16", "bfloat16", "int8", "int4"] | None = Field(
        None, description="compressed-tensors: dtype of the stored embedding / LM head (float16, bfloat16); compact: "
                          "that or a quantized grid (int8 per row, int4 in asymmetric groups of 32)")

    @model_validator(mode="after")
    def _embeddings_given(self):
        if self.format in ("compressed-tensors", "compact") and self.embeddings is None:
            raise ValueError(f"a {self.format} export re-writes a packed model; set embeddings to float16 or bfloat16"
                             f"{' (or int8 / int4)' if self.format == 'compact' else ''}: the quantize stage already "
                             "writes the float32 form")
        if self.format == "compressed-tensors" and self.embeddings in ("int8", "int4"):
            raise ValueError(f"embeddings {self.embeddings}: a compressed-tensors export stores them as float16 or "
                             "bfloat16; quantized embeddings need format compact")
        return self


# ---- evaluation --------------------------------------------------------------------------------

class _Scoring(Config):
    split: Literal[SPLITS] = Field("test", description="which split to score")
    limit: int | None = Field(None, ge=1, description="score only the first N examples of the split")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    split_seed: int | None = Field(None, description=SPLIT_SEED_HELP, json_schema_extra=_cli(("--split-seed", "--seed")))
    allow_overlap: bool = Field(False, description="report even on examples the lineage trained or selected on (the "
                                                   "output says so)")


class EvaluateConfig(_Scoring):
    task: str | Task | None = Field(DEFAULT_TASK, description="task: a builtin name, bigbench:<name>, suite:commonsense, a "
                                                     "file or hf:<dataset>; 'none' for perplexity only")
    perplexity_text: str | None = Field(None, description="also measure perplexity on this text: 'wiki', 'news' or a "
                                                          "UTF-8 file")
    seq_len: int = Field(512, ge=8, description="perplexity window length in tokens")
    max_windows: int | None = Field(None, ge=1, description="perplexity over at most this many windows (default: "
                                                            "the whole text)")
    drift: bool = Field(True, description="compare a tuned model's perplexity with its base's",
                        json_schema_extra=_cli(cli=False))
    int4: Literal["dequantize", "kernel"] = Field(
        "dequantize", description="INT4 layers of a packed model: dequantize (exact, float32 weights cached) or "
                                  "kernel (torch's int4 matmul in bfloat16, weights stay packed; log-probabilities "
                                  "within ~0.1 nats of the exact path)")
    embeddings: Literal["float16", "bfloat16", "int4"] | None = Field(
        None, description="hold the token embedding and LM head in this dtype in memory; int4: as INT4 codes, the "
                          "head on the int4 path (a compact export's stored grid, else quantized on loading)")

    @field_validator("task")
    @classmethod
    def _none(cls, task):
        return None if isinstance(task, str) and task.lower() == "none" else task

    @model_validator(mode="after")
    def _something(self):
        if self.task is None and self.perplexity_text is None:
            raise ValueError("nothing to evaluate: give a task, a perplexity text, or both")
        return self


class CompareConfig(_Scoring):
    task: str | Task = Field(DEFAULT_TASK, description="task both models are scored on; suites report per member")


class ImportanceConfig(Config):
    """First-order importance of heads and FFN neurons (nas/importance.py) over a task's training split."""

    task: str | Task | None = Field(None, description="task whose training split is scored (default: the model's "
                                                      "training task, else polarity)")
    limit: int | None = Field(None, ge=1, description="score on the first N training examples")
    batch_size: int = Field(8, ge=1, description="examples per backward pass")
    max_length: int = Field(256, ge=8, description="sequences are cut to this many tokens")
    split_seed: int | None = Field(None, description=SPLIT_SEED_HELP)


class SpaceConfig(Config):
    """EFTNAS search space from importance (nas/budgets.py), with the model reordered by importance."""

    budgets: int | list[float] = Field(5, description="a count of budgets evenly spaced from min_fraction to 1, or "
                                                      "the fractions of the full model's cost themselves")
    min_fraction: float = Field(0.25, gt=0, le=1, description="the smallest budget, a fraction of the full model")
    metric: Literal["macs", "params"] = Field("macs", description="cost: MACs per token (linear layers and "
                                                                  "attention products) or parameters")
    seq_len: int = Field(128, ge=1, description="macs: the sequence length of the attention products")
    tolerance: float = Field(0.01, gt=0, lt=0.5, description="each budget is met within this relative error")
    reorder: bool = Field(True, description="write the model with heads and neurons sorted by importance, so "
                                            "every choice is a prefix")
    skip: bool = Field(False, description="layer skipping: a skip candidate's choices end in 0 (that layer's "
                                          "attention or MLP skipped; searched, extracted as an empty sub-block)")
    skip_fraction: float = Field(0.02, ge=0, le=1, description="a dimension whose smallest kept width is under "
                                                               "this fraction of its full width is a skip candidate")


class SupernetConfig(Config):
    """EFTNAS super-network training (eftnas.supernet): every weight, several widths per step, distilled."""

    task: str | Task | None = Field(None, description="task whose training split trains the super-network (default: "
                                                      "the task its lineage trained on, else polarity)")
    sampler: Literal[(*SUBNET_SAMPLERS, *TARGETED_SAMPLERS)] = Field("sandwich", description=(
        "configurations per optimizer step: sandwich (maximal, random, minimal; EFTNAS'), uniform (one random) or "
        "budgets (maximal, one of the space's intermediate budgets' widths, minimal)"))
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the cross-entropy; the distillation term gets "
                                                      "1 - alpha (EFTNAS: 0.1)")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T (the KL is scaled by T^2; "
                                                      "EFTNAS: 2)")
    split_seed: int | None = Field(None, description=SPLIT_SEED_HELP)
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation settings (learning rate 5e-5 "
                                                                        "unless given: every weight trains)")


class InspectConfig(Config):
    """What `inspect` measures beyond the files: a model's costs (nas/cost.py) and, on request, latency."""

    costs: bool = Field(True, description="build the model: parameters, MACs per token, per-block widths")
    seq_len: int = Field(128, ge=1, description="MACs: each token's attention spans this many positions")
    latency: bool = Field(False, description="measure CPU prefill and greedy-decode latency (batch 1, median)")
    prefill_tokens: int = Field(128, ge=1, description="latency: prompt tokens of the prefill")
    decode_tokens: int = Field(8, ge=0, description="latency: greedy new tokens timed after the prompt")
    repeats: int = Field(3, ge=1, description="latency: repeats (the median is reported)")
    threads: int | None = Field(None, ge=1, description="latency: CPU threads (default: torch's)")


class GenerateConfig(Config):
    """`generate`: a greedy continuation of a prompt, batch 1, on the fast inference path (deploy/decode.py)."""

    max_new_tokens: int = Field(32, ge=1, description="new tokens at most (fewer when the model ends the text)")
    int4: Literal["dequantize", "kernel"] = Field("kernel", description="INT4 layers of a packed model: kernel "
                                                  "(torch's int4 matmul, weights stay packed) or dequantize (exact)")
    embeddings: Literal["float16", "bfloat16", "int4"] | None = Field(None, description="hold the token embedding and "
                                                                      "LM head in this form in memory (as evaluate)")
    compile: bool = Field(False, description="torch.compile the one-token step (tens of seconds once; pays off "
                                             "over many tokens)")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's)")


STAGE_CONFIGS: dict[str, type[Config]] = {c.stage_name(): c for c in (
    SparsifyConfig, QuantizeConfig, FinetuneConfig, ExtractConfig, SearchConfig, MergeConfig, EvaluateConfig,
    CompareConfig, RefactorConfig, IntrudersConfig, ExportConfig, ImportanceConfig, SpaceConfig, SupernetConfig)}
