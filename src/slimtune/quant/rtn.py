"""Round-to-nearest quantization: a grid per group (min-max, or the mse search), every weight rounded
independently.

Zeros stay zeros: the min-max range always contains 0 and zero points are integers, so
w = 0 gives q = z exactly and dequantizes to exactly 0.
"""

from __future__ import annotations

import torch

from .params import DEFAULT_BITS, DEFAULT_GROUP_SIZE, QuantParams, compute_params


def rtn_quantize(weight: torch.Tensor, bits: int = DEFAULT_BITS, group_size: int = DEFAULT_GROUP_SIZE,
                 symmetric: bool = True, observer: str = "minmax") -> tuple[QuantParams, torch.Tensor]:
    """(QuantParams, uint8 codes [out, in]) for weight [out, in]; observer "minmax" or "mse"."""
    params = compute_params(weight.detach(), bits, group_size, symmetric, observer)
    return params, params.quantize(weight.detach())
