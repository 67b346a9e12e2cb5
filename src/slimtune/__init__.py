"""slimtune: sparsify, quantize, fine-tune, search, merge and evaluate language models."""

__version__ = "0.1.0"
