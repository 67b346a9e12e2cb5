"""slimtune: sparsify, quantize, fine-tune, search, merge and evaluate language models."""

from .api import evaluate, finetune, merge
from .errors import ArtifactError, ConfigError, DataError, ModelLoadError, SlimtuneError
from .models import load_model

__version__ = "0.1.0"

__all__ = ["evaluate", "finetune", "merge", "load_model", "SlimtuneError", "ConfigError", "DataError",
           "ModelLoadError", "ArtifactError", "__version__"]
