"""Sparsity: pruning masks, magnitude / Wanda / SparseGPT, and the sparsify_model entry point."""

from .magnitude import magnitude_prune
from .masks import (check_exact, matrix_mask, n_pruned, nm_mask, parse_pattern, row_mask,
                    satisfies_nm, select_mask)
from .report import sparsity_report
from .sparsegpt import sparsegpt_prune
from .sparsify import (DEFAULT_CALIBRATION, DEFAULT_SKIP, SPARSIFIERS, Sparsifier, SparsifyPlan,
                       apply_plan, sparsify_model, validate_sparsify_args)
from .wanda import wanda_prune, wanda_scores

__all__ = [
    "DEFAULT_CALIBRATION", "DEFAULT_SKIP", "SPARSIFIERS", "Sparsifier", "SparsifyPlan", "apply_plan",
    "check_exact", "magnitude_prune", "matrix_mask", "n_pruned", "nm_mask", "parse_pattern", "row_mask",
    "satisfies_nm", "select_mask", "sparsegpt_prune", "sparsify_model", "sparsity_report",
    "validate_sparsify_args", "wanda_prune", "wanda_scores",
]
