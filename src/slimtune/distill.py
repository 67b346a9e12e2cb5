"""Knowledge distillation from a frozen teacher model: the options an adapter's fine-tuning takes
(finetune --teacher: a LoNAS super-network or a LoRA learning from a fine-tuned model; an encoder
classifier, adapted or fully fine-tuned, from a fine-tuned classifier: classify.model.load_teacher_classifier)
and the teacher's loading, shared with EFTNAS' super-network. The loss itself is train.distillation_loss,
applied per sampled configuration by train.Objective."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import ConfigError


class DistillOptions(BaseModel):
    """finetune: distil every trained configuration from a frozen teacher (off unless `teacher` is given)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(None, description="lora/nls: a fine-tuned causal LM with the same vocabulary (e.g. "
                                                  "a merged LoRA) whose next-token distributions every trained "
                                                  "configuration learns: loss a*CE + (1-a)*T^2*KL(teacher || student); "
                                                  "an encoder (full, lora or nls): a classifier over the task's "
                                                  "labels, whose class distributions it learns")
    distill_alpha: float = Field(0.1, ge=0, le=1, description="teacher: the weight a of the cross-entropy (EFTNAS: "
                                                              "0.1)")
    temperature: float = Field(2.0, gt=0, description="teacher: the distillation temperature T (EFTNAS: 2)")


def load_teacher(teacher: str | Path, student: nn.Module) -> nn.Module:
    """The teacher, loaded frozen in eval mode; refused unless its vocabulary is the student's (the KL
    compares their next-token distributions position by position)."""
    from .models import load_model

    net, _ = load_model(teacher)
    if net.config.vocab_size != student.config.vocab_size:
        raise ConfigError(f"teacher {teacher} has a vocabulary of {net.config.vocab_size} tokens, the student "
                          f"{student.config.vocab_size}: distillation needs the same vocabulary (give a teacher "
                          "fine-tuned from the same model family)")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
