"""Fine-tuning on transformers' Trainer: task examples -> tokenized batches -> adapter training.

Trainer gives us gradient accumulation, schedules, checkpoints, resume, logging and multi-process
training. We change only what an adapter run needs: checkpoints hold the trainable parameters
(a few MB) instead of the whole model, and resuming loads them back; and one objective hook
(`Objective`): a step may train several configurations of an elastic super-network (their
gradients accumulate), with distillation from a teacher and extra regularizer terms.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoints import TRAINABLE_FILE, resume_point, run_fingerprint, write_marker
from .data.tasks import Example
from .errors import ConfigError, TrainingError


class TrainConfig(BaseModel):
    """Optimisation settings (validated; unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: float = Field(3.0, gt=0, description="passes over the training split")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    learning_rate: float = Field(3e-4, gt=0, description="peak learning rate",
                                 json_schema_extra={"flag": ("--lr", "--learning-rate")})
    batch_size: int = Field(8, ge=1, description="examples per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(256, ge=8, description="sequences are cut to this many tokens")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    seed: int = Field(42, description="seed of the adapter's initialisation, the data order and NLS sampling")
    logging_steps: int = Field(10, ge=1, description="log the loss every this many optimizer steps")
    save_steps: int = Field(50, ge=1, description="checkpoint every this many optimizer steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")


class Objective:
    """How a micro-batch's training loss is formed: the one hook for several configurations per step,
    distillation and regularizers.

    sampler       gives the step's configurations (`step_configurations()`) and activates one
                  (`activate(config)`): nas.ElasticSampler; None: the first callback that has them.
    reduction     the loss of a micro-batch over the step's configurations c = 1..n: "mean" (default)
                  trains on (1/n)·Σ_c L_c, so one configuration is plain training and a learning rate
                  means the same for any n; "sum" trains on Σ_c L_c (OFA / EFTNAS accumulate gradients so).
                  Either way it is one backward through every configuration's graph, so the gradients
                  of all of them accumulate before the optimizer step (memory: n forward graphs; gradient
                  checkpointing would recompute them all under the last configuration, so it is refused).
    teacher       a frozen model (or a callable inputs -> logits) to distil from: per configuration
                  L_c = a·CE + (1-a)·T²·KL(teacher ‖ student) (`distillation_loss`); EFTNAS: a=0.1, T=2.
    regularizers  callables (model, outputs) -> scalar tensor, added to every configuration's loss as is
                  (they are not divided by gradient accumulation: scale them yourself).
    With one configuration, no teacher and no regularizer the Trainer's own loss runs unchanged.
    """

    def __init__(self, sampler=None, reduction: Literal["mean", "sum"] = "mean",
                 teacher: nn.Module | Callable | None = None, alpha: float = 0.1, temperature: float = 2.0,
                 regularizers: Sequence[Callable] = ()):
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"objective reduction must be 'mean' or 'sum', got {reduction!r}")
        if not 0.0 <= alpha <= 1.0 or not temperature > 0:
            raise ConfigError(f"distillation needs 0 <= alpha <= 1 and temperature > 0, got {alpha}, {temperature}")
        self.sampler, self.reduction, self.teacher = sampler, reduction, teacher
        self.alpha, self.temperature, self.regularizers = float(alpha), float(temperature), list(regularizers)

    def configurations(self) -> list:
        return self.sampler.step_configurations() if self.sampler is not None else [None]

    def plain(self, n_configs: int) -> bool:
        return n_configs <= 1 and self.teacher is None and not self.regularizers

    @torch.no_grad()
    def teacher_logits(self, inputs: dict) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        if not isinstance(self.teacher, nn.Module):
            return self.teacher(inputs)
        return self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits

    def config_loss(self, model, inputs: dict, outputs, ce: torch.Tensor, teacher_logits, num_items_in_batch) -> torch.Tensor:
        loss = ce
        if teacher_logits is not None:
            loss = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], ce, self.alpha,
                                     self.temperature, num_items_in_batch)
        for regularizer in self.regularizers:
            loss = loss + regularizer(model, outputs)
        return loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      ce: torch.Tensor, alpha: float = 0.1, temperature: float = 2.0,
                      num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """a·CE + (1-a)·T²·KL(teacher ‖ student), the KL between the temperature-softened next-token
    distributions at the positions the CE scores (logits at t predict label t+1; labels -100 are
    skipped), summed over positions and divided as the CE is: by `num_items` (the step's label tokens,
    under gradient accumulation) when given, else by the number of scored positions. Logits of shape
    (batch, classes) (a sequence classifier) give the batch mean of the per-sequence KL."""
    if student_logits.dim() == 2:  # sequence classification: one distribution per sequence, batch mean as the CE
        s, t = student_logits.float() / temperature, teacher_logits.float().to(student_logits.device) / temperature
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
        return alpha * ce + (1.0 - alpha) * temperature ** 2 * kl.to(ce.dtype)
    mask = labels[:, 1:] != -100
    s = student_logits[:, :-1][mask].float() / temperature
    t = teacher_logits[:, :-1][mask].float().to(s.device) / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    kl = kl / (num_items if num_items is not None else max(int(mask.sum()), 1))
    return alpha * ce + (1.0 - alpha) * temperature ** 2 * kl.to(ce.dtype)


def tokenize_example(example: Example, tokenizer, max_length: int, add_eos: bool) -> dict:
    """input_ids for prompt + completion, labels masking the prompt (loss on the completion only)."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(example.prompt + example.completion, add_special_tokens=True)["input_ids"]
    # Tokenizers can merge across the boundary; the shared prefix is the prompt.
    n_prompt = 0
    while n_prompt < min(len(prompt_ids), len(full_ids)) and prompt_ids[n_prompt] == full_ids[n_prompt]:
        n_prompt += 1
    if add_eos and tokenizer.eos_token_id is not None:
        full_ids = full_ids + [tokenizer.eos_token_id]
    labels = [-100] * n_prompt + full_ids[n_prompt:]
    if len(full_ids) > max_length:  # keep the completion, drop the start of the prompt
        full_ids, labels = full_ids[-max_length:], labels[-max_length:]
    return {"input_ids": full_ids, "labels": labels}


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example], tokenizer, max_length: int, add_eos: bool):
        self.items = [tokenize_example(e, tokenizer, max_length, add_eos) for e in examples]
        self.items = [it for it in self.items if any(l != -100 for l in it["labels"])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class PadCollator:
    """Right-pads a batch; padded positions get attention 0 and label -100."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _make_trainer_class():
    from transformers import Trainer

    class AdapterTrainer(Trainer):
        """Checkpoints hold only the trainable parameters; resume loads them back.

        Callbacks with `save_checkpoint(dir)` / `load_checkpoint(dir)` keep their state in the
        checkpoints too, and those with `add_micro_batch_loss(loss)` see each micro-batch's loss.
        """

        def _stateful_callbacks(self, method: str) -> list:
            return [getattr(cb, method) for cb in self.callback_handler.callbacks if hasattr(cb, method)]

        slimtune_fingerprint: str = ""
        slimtune_loss_sum: float = 0.0  # the training losses of the whole run, restored on resume
        slimtune_objective: Objective | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            objective = self.slimtune_objective
            configs = objective.configurations() if objective is not None else [None]
            if objective is None or objective.plain(len(configs)):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            teacher_logits = objective.teacher_logits(inputs)
            scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None  # as training_step decides
            record = getattr(objective.sampler, "add_config_loss", None)
            total, first = None, None
            for index, config in enumerate(configs):
                if len(configs) > 1:
                    objective.sampler.activate(config)
                ce, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
                loss = objective.config_loss(model, inputs, outputs, ce, teacher_logits, num_items_in_batch)
                if record is not None:
                    record(index, loss.item() / (1 if scaled else self.current_gradient_accumulation_steps))
                total, first = (loss, outputs) if total is None else (total + loss, first)
            if objective.reduction == "mean":
                total = total / len(configs)
            return (total, first) if return_outputs else total

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            # Under DDP each process holds the loss of its own shard: the mean over processes is the step's.
            value = self.accelerator.reduce(loss.detach(), "mean").item() if self.args.world_size > 1 else loss.item()
            if not math.isfinite(value):
                raise TrainingError(
                    f"the training loss became {value} at step {self.state.global_step + 1}; training stopped "
                    f"(learning rate {self.args.learning_rate:g}): lower the learning rate or the adapter's alpha, or "
                    "check the base model's outputs")
            self.slimtune_loss_sum += value
            for observe in self._stateful_callbacks("add_micro_batch_loss"):
                observe(value)
            return loss

        def _save_checkpoint(self, model, trial) -> None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

            limit = self.args.save_total_limit
            self.args.save_total_limit = None  # older checkpoints go only once this one is marked complete
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if self.args.should_save:
                run_dir = self._get_output_dir(trial=trial)
                write_marker(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"),
                             self.slimtune_fingerprint, self.state.global_step, self.slimtune_loss_sum)
                rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return
            os.makedirs(output_dir, exist_ok=True)
            model = self.accelerator.unwrap_model(self.model)
            save_file(trainable_state(model), os.path.join(output_dir, TRAINABLE_FILE))
            for save in self._stateful_callbacks("save_checkpoint"):
                save(output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            model = self.accelerator.unwrap_model(model or self.model)
            state = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
            params = dict(model.named_parameters())
            missing = set(state) ^ {n for n, p in params.items() if p.requires_grad}
            if missing:
                raise RuntimeError(f"checkpoint {resume_from_checkpoint} does not match the model: {sorted(missing)[:5]}")
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(value)
            for load in self._stateful_callbacks("load_checkpoint"):
                load(resume_from_checkpoint)
            from .checkpoints import read_marker

            self.slimtune_loss_sum = float((read_marker(resume_from_checkpoint) or {}).get("loss_sum", 0.0))

    return AdapterTrainer


def train(model: nn.Module, tokenizer, examples: Sequence[Example], config: TrainConfig,
          checkpoint_dir: str | Path, *, add_eos: bool = False, callbacks: list | None = None,
          report_to: str | list[str] = "none", progress: bool = True, run_key: dict | None = None,
          fresh: bool = False, objective: Objective | None = None, dataset=None, collator=None) -> dict:
    """Train the model's trainable parameters on `examples`; resumes from the newest complete checkpoint of
    the same configuration in `checkpoint_dir` (checkpoints.resume_point: `run_key` adds what the caller
    knows of the run, e.g. the base model; checkpoints of another configuration are an error, or are removed
    when `fresh`). `objective` forms each micro-batch's loss (`Objective`: several configurations per step,
    distillation, regularizers; default: the sampler among `callbacks`, if any, with the mean over its
    configurations). `dataset` and `collator` replace the examples' causal-LM tokenization (a classifier's
    texts and label ids: classify.data); the dataset keeps its tokenized `items` for the run's fingerprint.
    Returns the training metrics (loss over the whole run, steps, runtime)."""
    from transformers import TrainingArguments

    checkpoint_dir = Path(checkpoint_dir)
    dataset = dataset if dataset is not None else ExampleDataset(examples, tokenizer, config.max_length, add_eos)
    if len(dataset) == 0:
        from .errors import DataError
        raise DataError("no training examples left after tokenization (is the training split empty?)")
    objective = objective or Objective()
    if objective.sampler is None:
        objective.sampler = next((cb for cb in callbacks or [] if hasattr(cb, "step_configurations")), None)
    if config.gradient_checkpointing and getattr(objective.sampler, "configs_per_step", 1) > 1:
        raise ConfigError("gradient checkpointing recomputes a forward pass during backward, under whichever "
                          "configuration is active then; a step that trains several configurations cannot use it")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=report_to,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        # Several CPU processes (torchrun) talk over gloo; NCCL is the default on GPUs.
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
    )
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=dataset,
        data_collator=collator or PadCollator(tokenizer.pad_token_id), callbacks=callbacks,
    )
    trainer.slimtune_fingerprint = run_fingerprint(model, dataset.items, config, run_key)
    trainer.slimtune_objective = objective
    main = int(os.environ.get("RANK", "0")) == 0
    result = trainer.train(resume_from_checkpoint=resume_point(checkpoint_dir, trainer.slimtune_fingerprint,
                                                               fresh, main))
    model.eval()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": trainer.slimtune_loss_sum / max(result.global_step, 1),  # the whole run, resumed or not
        "steps": result.global_step,
        "train_examples": len(dataset),
        "world_size": args.world_size,  # processes (torchrun); each takes batch_size examples per micro-batch
        "runtime_s": result.metrics.get("train_runtime"),
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history],
    }


# ---- configs and multi-process helpers (used by api.finetune) -----------------------------

def build_train_config(train_config: TrainConfig | dict | None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a config (or dict) and keyword overrides (None values are not overrides)."""
    if isinstance(train_config, TrainConfig):
        base = train_config.model_dump()
    else:
        base = dict(train_config or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**base)
    except ValidationError as e:
        raise ConfigError(describe_validation(e, "training config")) from e


FULL_LEARNING_RATE = 5e-5  # every weight trains (full fine-tuning, super-networks): the adapters' 3e-4 is too high


def build_full_train_config(train_config: TrainConfig | dict | None, **overrides: Any) -> TrainConfig:
    """build_train_config for training every weight: the learning rate FULL_LEARNING_RATE unless given."""
    given = train_config.model_fields_set if isinstance(train_config, TrainConfig) else set(train_config or {})
    if "learning_rate" not in given and overrides.get("learning_rate") is None:
        overrides["learning_rate"] = FULL_LEARNING_RATE
    return build_train_config(train_config, **overrides)


def describe_validation(e: ValidationError, what: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {what}: " + "; ".join(parts)


def distributed() -> bool:
    """True inside a multi-process run (torchrun) whose process group is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of a multi-process run, or the only process."""
    import torch.distributed as dist

    return not distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait until every process of a multi-process run gets here (a no-op in a single process)."""
    import torch.distributed as dist

    if distributed():
        dist.barrier()
