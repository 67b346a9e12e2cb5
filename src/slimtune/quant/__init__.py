"""Quantization: QuantParams (bits, groups, scales, integer zero points), RTN, GPTQ, QuantLinear
(packed storage), compressed-tensors export and exact reload, and the quantize_model entry point."""

from .formats import export_compressed_tensors, load_quantized, quantization_config, save_quantized
from .gptq import gptq_quantize
from .linear import QuantLinear, quant_linears, quantize_model_linears
from .packing import pack, packed_width, unpack
from .params import (SUPPORTED_BITS, QuantParams, check_bits, check_group_size, compute_params,
                     dividing_group_sizes)
from .quantize import (DEFAULT_CALIBRATION, DEFAULT_SKIP, QUANTIZERS, QuantizePlan, Quantizer, apply_plan,
                       quantize_model, validate_quantize_args)
from .rtn import rtn_quantize

__all__ = [
    "DEFAULT_CALIBRATION", "DEFAULT_SKIP", "QUANTIZERS", "QuantLinear", "QuantParams", "QuantizePlan",
    "Quantizer", "SUPPORTED_BITS", "apply_plan", "check_bits", "check_group_size", "compute_params",
    "dividing_group_sizes", "export_compressed_tensors", "gptq_quantize", "load_quantized", "pack",
    "packed_width", "quant_linears", "quantization_config", "quantize_model", "quantize_model_linears",
    "rtn_quantize", "save_quantized", "unpack", "validate_quantize_args",
]
