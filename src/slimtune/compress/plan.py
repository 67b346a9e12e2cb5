"""Planning a compression: which linears, with which calibration data; all checked before any work.

Every method of every stage compresses the same set: the linears of the transformer blocks (all
linears for a model without blocks), minus the family's keep-dense modules
(architectures.block_linears) and the skip patterns. The output head is never compressed (nor
are embeddings, which are not linear layers).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..architectures import block_linears, decoder_layers, matches_any
from ..data.calibration import check_calibration
from ..errors import ConfigError
from .methods import Method

DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)
# batch_size >= n_samples: all samples in one batch, so every layer runs once and each group of
# linears is compressed from the inputs the already-compressed linears before it produce (single
# pass, see calibration.run_layerwise); a smaller batch_size bounds activation memory at two
# passes per layer.
DEFAULT_CALIBRATION: dict[str, Any] = {"source": "news", "n_samples": 16, "seq_len": 512, "seed": 0,
                                       "batch_size": 16}


class CompressPlan:
    """What run.apply needs from a stage's plan (a dataclass with .method, .targets, .calibration
    and .input_ids): the settings every group is compressed with, and the stage's invariant check."""

    method: Method
    targets: list[str]
    calibration: dict[str, Any] | None
    input_ids: torch.Tensor | None

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of method.compress (besides weights and stats)."""
        raise NotImplementedError

    def check(self, name: str, module: nn.Module, before: torch.Tensor, result) -> None:
        """Called once per matrix after its new weight is written (before: its float weight
        before compression; result: a run.Compressed). Raise if the stage's promise is broken:
        a broken promise is a bug in slimtune, not a user error."""


def check_skip(skip: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(skip, str):
        skip = (skip,)
    if not all(isinstance(p, str) for p in skip):
        raise ConfigError(f"skip must be a list of module-name patterns (strings), got {skip!r}")
    return tuple(skip)


def select_targets(model: nn.Module, method: Method, linears: dict[str, nn.Module], skip: Sequence[str],
                   verb: str) -> tuple[list[str], list[str]]:
    """(target names, names of the linears left as they are). A calibrated method needs the
    stack of blocks (ConfigError without one); verb words the error ("prune", "quantize")."""
    if method.calibrated:
        decoder_layers(model)
    targets = [n for n in block_linears(model, linears) if not matches_any(n, skip)]
    if not targets:
        raise ConfigError(f"no linear module left to {verb} (skip={list(skip)}); linear modules: "
                          f"{', '.join(list(linears)[:8]) or 'none'}{' ...' if len(linears) > 8 else ''}")
    chosen = set(targets)
    return targets, [n for n in linears if n not in chosen]


def calibrate(model: nn.Module, tokenizer, method: Method,
              calibration: dict | None) -> tuple[dict[str, Any] | None, torch.Tensor | None]:
    """(completed calibration dict, token ids) for a calibrated method, (None, None) otherwise;
    see data.calibration.check_calibration (DataError for a text too short, before any work)."""
    if not method.calibrated:
        return None, None
    return check_calibration(model, tokenizer, method.name, calibration, DEFAULT_CALIBRATION)
