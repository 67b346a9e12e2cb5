"""Compression methods and their registries.

A method (a pruner, a quantizer, ...) declares its name, the calibration statistics it needs, its
options with their defaults and checks, and one function that compresses a group of linears
sharing an input, given those statistics:

    compress(weights, stats, **settings) -> one result per weight

weights: float32 copies of the group's matrices [out, in] (several, e.g. q/k/v, when they read
the same input; one in the direct pass). stats: the group's calibration.InputStats (its .sqnorm
or .hessian, as declared), or None for a method without calibration. settings: the stage's own
arguments (sparsity, pattern; bits, group size, ...) plus the method's options. A result is
the new float weight of the matrix, or a run.Compressed (that weight plus what the stage keeps,
e.g. quantization codes, and report entries). compress must not change `weights` in place (they
may be views of the model's weights, and the stage's checks compare against them).

Adding a method: its algorithm in one module of its stage's package, and one entry in that
stage's registry (sparsity.sparsify.SPARSIFIERS, quant.quantize.QUANTIZERS); the generic tests
over each registry pick it up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..calibration import STATS
from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One compression method; stats is None (no calibration data), "sqnorm" or "hessian"."""

    name: str
    stats: str | None
    compress: Callable[..., list]
    options: dict[str, tuple[Any, Callable]] = field(default_factory=dict)  # name -> (default, check)
    description: str = ""

    def __post_init__(self) -> None:
        if self.stats is not None and self.stats not in STATS:
            raise ValueError(f"method {self.name!r}: stats must be None or one of {', '.join(STATS)}, "
                             f"got {self.stats!r}")

    @property
    def calibrated(self) -> bool:
        """True if the method runs layer by layer on calibration data."""
        return self.stats is not None


class Registry(dict):
    """name -> Method, for one stage (kind: "sparsity", "quantization"); a plain dict otherwise."""

    def __init__(self, kind: str, methods: Iterable[Method] = ()):
        super().__init__()
        self.kind = kind
        for method in methods:
            self.register(method)

    def register(self, method: Method) -> Method:
        if method.name in self:
            raise ValueError(f"{self.kind} method {method.name!r} is registered twice")
        self[method.name] = method
        return method

    def lookup(self, name: str) -> Method:
        """The method called `name`; a ConfigError naming the known ones if there is none."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} method {name!r}; known methods: {', '.join(sorted(self))}")
        return self[name]


# ---- options ---------------------------------------------------------------------------------

def choice(*allowed, help: str = ""):
    """An option check: the value must be one of `allowed`; `help` says what the option does (the
    CLI shows it, with the choices)."""
    def check(name, value):
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"option {name}={value!r} is not valid; choose from {', '.join(map(repr, allowed))}")
        return value
    check.choices, check.help = allowed, help
    return check


def number(low: float, high: float = math.inf, integer: bool = False, help: str = ""):
    """An option check: a number (an integer if `integer`) in [low, high]; `help` as for choice."""
    def check(name, value):
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"option {name} must be {kind} in [{low}, {high}], got {value!r}")
        return value
    check.choices, check.help = None, help
    return check


def check_options(method: Method, options: dict | None) -> dict[str, Any]:
    """The method's options, each checked, with the defaults filled in (in declaration order)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        accepted = ", ".join(method.options) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for method {method.name!r}; accepted: {accepted}")
    return {k: check(k, options[k]) if k in options else default for k, (default, check) in method.options.items()}
