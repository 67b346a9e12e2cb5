"""Sequence classification with BERT-like encoders (EFTNAS' setting): a task's classification view,
a classifier model with a trainable head, its training data, and its accuracy.

  data.py     classification_view (a multiple-choice task whose examples share one label set: polarity,
              BIG-bench binary/multi-class tasks, user files), the tokenized dataset and its collator
  model.py    load_classifier (an encoder gets a new head over the view's labels; a saved classifier
              loads whole), is_encoder_spec
  stage.py    the finetune stage for encoders (full fine-tuning or LoRA merged into the weights),
              written as an AutoModelForSequenceClassification directory with a manifest; or nls:
  elastic.py  NLS / LoNAS on encoders: elastic ranks and widths, a super-adapter carrying its base classifier
"""

from .data import ClassificationDataset, ClassificationView, LabelCollator, classification_view
from .model import is_classifier, is_encoder_spec, load_classifier

__all__ = ["ClassificationDataset", "ClassificationView", "LabelCollator", "classification_view", "is_classifier",
           "is_encoder_spec", "load_classifier"]
