"""One skeleton for every compression stage (sparsify, quantize).

A method declares its statistics, options and how it compresses one group of linears that share
an input (methods.Method, registered in its stage's methods.Registry); plan.py picks the targets
and checks the calibration, run.py runs the direct pass or the layer-by-layer run, writes every
result, calls the stage's invariant check and records the per-layer report.
"""

from .methods import Method, Registry, check_options, choice, number
from .plan import DEFAULT_CALIBRATION, DEFAULT_SKIP, CompressPlan, calibrate, check_skip, select_targets
from .run import Applied, Compressed, apply

__all__ = [
    "Applied", "CompressPlan", "Compressed", "DEFAULT_CALIBRATION", "DEFAULT_SKIP", "Method", "Registry",
    "apply", "calibrate", "check_options", "check_skip", "choice", "number", "select_targets",
]
