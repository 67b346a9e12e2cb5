"""Accuracy of a sequence classifier (an encoder with its head) on a classification view of a task:
the argmax of the head's logits against the label id, per example, batched with padding."""

from __future__ import annotations

import torch

from ..errors import NonFiniteError


def is_sequence_classifier(model) -> bool:
    archs = getattr(getattr(model, "config", None), "architectures", None) or []
    return type(model).__name__.endswith("ForSequenceClassification") or \
        any(a.endswith("ForSequenceClassification") for a in archs)


@torch.no_grad()
def classifier_logits(model, tokenizer, texts, batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    from ..classify.data import truncating_start
    from ._common import model_device

    device = model_device(model)
    out = []
    with truncating_start(tokenizer):  # as the classifier trained
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out.append(model(**enc).logits.float().cpu())
    logits = torch.cat(out) if out else torch.zeros(0, model.config.num_labels)
    if not torch.isfinite(logits).all():
        raise NonFiniteError("the classifier's logits are not finite (nan or inf): its weights hold nan or inf "
                             "values, so there is no accuracy to report")
    return logits


def classification_accuracy(model, tokenizer, task, examples, batch_size: int = 32) -> dict:
    """{"n", "acc", "predictions", "labels", "scores"} over `examples`, with the labels read from the
    model's id2label (the task must have exactly those labels)."""
    from ..classify.data import classification_view
    from ..classify.model import classifier_labels

    view = classification_view(task, classifier_labels(model))
    logits = classifier_logits(model, tokenizer, [ex.prompt for ex in examples], batch_size)
    predictions = logits.argmax(-1).tolist()
    labels = view.label_ids(examples)
    scores = [float(p == l) for p, l in zip(predictions, labels)]
    return {"n": len(examples), "acc": sum(scores) / max(len(scores), 1), "predictions": predictions,
            "labels": labels, "scores": scores}
