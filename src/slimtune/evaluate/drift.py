"""Perplexity drift: how far fine-tuning moved a model from its base, on the same plain text.

Task accuracy can rise while the language model underneath is wrecked (a short, aggressive
fine-tuning of a small model can multiply its perplexity). slimtune reports the tuned model's
perplexity over its base's, and warns past DRIFT_WARN.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import Artifact
from ..errors import ArtifactError
from ..models import BUILTIN_MODELS, load_model

# A chosen threshold (README), not a derived one: the ratio compares a tuned model with the very
# model its adapter was trained on, so compression is not in it; past 1.5x the adapter is
# rewriting the language model rather than adapting it.
DRIFT_WARN = 1.5


def drift(tuned: float, base: float) -> dict:
    """{perplexity_base, perplexity_ratio[, drift_warning]} of a tuned model against its base."""
    ratio = tuned / base
    out = {"perplexity_base": base, "perplexity_ratio": ratio}
    if ratio > DRIFT_WARN:
        out["drift_warning"] = (
            f"perplexity on the same text grew {ratio:.2f}x over the base's ({base:.2f} -> {tuned:.2f}), past the "
            f"{DRIFT_WARN}x warning threshold: fine-tuning moved the language model away from its base (fewer steps, "
            "a lower learning rate or a smaller rank keep it closer)")
    return out


def tuning_base(model: str | Path) -> str | None:
    """The model a merged artifact's adapter was merged into (None for anything else, or when that
    model is no longer where the manifest says)."""
    try:
        artifact = Artifact.find(model)
    except ArtifactError:
        return None
    if artifact is None or artifact.stage != "merge":
        return None
    base = artifact.base
    if base is None:
        return None
    return base if Path(base).exists() or base in BUILTIN_MODELS else None


def perplexity_drift(model, adapter, tokenizer, text, result, seq_len, max_windows, batch_size, progress) -> dict:
    """A tuned model's perplexity against its base's on the same text (an adapter's base is the
    model it is applied to; a merged model's, the model it was merged into)."""
    from .perplexity import perplexity

    base = model if adapter is not None else tuning_base(model)
    if base is None:
        return {}
    base_net, _ = load_model(base)
    ppl = perplexity(base_net, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                     batch_size=batch_size, progress=progress)["perplexity"]
    return {"perplexity_base_model": str(base), **drift(result["perplexity"], ppl)}
