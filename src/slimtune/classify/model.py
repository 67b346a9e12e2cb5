"""Classifier models: an encoder with a sequence-classification head.

A BERT-like encoder (a local directory or an alias such as minilm-l6) gets a new, seeded head over
the task's labels; a classifier slimtune saved (config architectures *ForSequenceClassification, with
id2label) loads whole, head included, so evaluation and later stages see the trained head; one extracted
with per-layer widths or fewer heads (widths_io) is rebuilt with its recorded shapes, so it fine-tunes too."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..architectures import is_causal_config
from ..errors import ConfigError, ModelLoadError


def _config(spec):
    from transformers import AutoConfig

    from ..models import resolve_model

    source = resolve_model(spec)
    if str(source).endswith(".gguf") or not (Path(source) / "config.json").is_file():
        return source, None
    return source, AutoConfig.from_pretrained(source)


def is_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def is_encoder_spec(spec: str | os.PathLike) -> bool:
    """Whether a model spec names a local encoder (no causal LM head): the classification path."""
    try:
        _, config = _config(spec)
    except Exception:
        return False
    return config is not None and not is_causal_config(config)


def load_classifier(spec: str | os.PathLike, labels=None, seed: int = 0, dtype=torch.float32):
    """(model, tokenizer): a saved classifier as it is (its labels must be `labels` when given), or an
    encoder with a new head over `labels` (initialised from `seed`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source, config = _config(spec)
    if config is None or is_causal_config(config):
        raise ConfigError(f"{spec} is not an encoder directory (BERT-like, with config.json): classification "
                          "heads go on encoders; causal LMs score tasks by log-likelihood")
    kwargs = {}
    if not is_classifier(config):
        if not labels:
            raise ConfigError(f"{spec} is an encoder without a classification head; give a task so that a head "
                              "over its labels can be trained")
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={l: i for i, l in enumerate(labels)})
    elif labels is not None and [config.id2label[i] for i in range(config.num_labels)] != list(labels):
        raise ConfigError(f"classifier {spec} predicts {list(config.id2label.values())}, not the labels "
                          f"{list(labels)}")
    torch.manual_seed(seed)  # the new head's initialisation
    try:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "some weights were newly initialized": the head, by design
        try:
            from ..widths_io import load_with_widths, read_widths

            shapes = read_widths(source) if is_classifier(config) and Path(source).is_dir() else None
            if shapes:  # an extracted sub-network with per-layer widths or fewer heads (widths_io)
                model = load_with_widths(AutoModelForSequenceClassification, source, config, dtype, shapes)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                                           **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load {spec} as a sequence classifier: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    model.eval()
    model.slimtune_source = str(spec)
    return model, tokenizer


def classifier_labels(model) -> tuple[str, ...]:
    return tuple(model.config.id2label[i] for i in range(model.config.num_labels))


def load_teacher_classifier(spec: str | os.PathLike, labels) -> torch.nn.Module:
    """A fine-tuned classifier over `labels` to distil from, frozen in eval mode; an encoder without a trained
    head is refused (a new, random head would teach noise)."""
    _, config = _config(spec)
    if config is None or not is_classifier(config):
        raise ConfigError(f"teacher {spec} is not a fine-tuned classifier: give one over the labels {list(labels)} "
                          "(e.g. the output of finetune --adapter full on the same task)")
    net, _ = load_classifier(spec, labels)
    for p in net.parameters():
        p.requires_grad_(False)
    return net
