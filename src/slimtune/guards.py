"""Guards against bad input: names and paths that stay inside a run directory, finite numbers, and
result files that may be written. Each raises a one-line SlimtuneError before any work starts."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from pathlib import Path

from .errors import ArtifactError, ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
NAME_RULE = ("letters, digits, '_', '-' and '.', not starting with '.' (no path separators): "
             "it names a directory inside the run directory")


def check_name(name: str, what: str = "stage name") -> str:
    """A name that becomes one directory inside a run directory: never '.', '..', hidden or a path."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise ConfigError(f"{what} {name!r} is not allowed; use {NAME_RULE}")
    return name


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path`, after checking that it resolves strictly inside `root` (symlinks followed)."""
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if root_resolved not in resolved.parents:
        raise ArtifactError(f"{path} resolves to {resolved}, outside the run directory {root_resolved}; "
                            "refusing to write or remove it")
    return Path(path)


def remove_inside(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Remove a file or directory tree that must lie inside `root` (nothing if it is absent)."""
    path = inside(root, path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def check_finite(what: str, value) -> None:
    """Reject inf and nan (a float option that is set must be a finite number)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")


def finite_float(text: str) -> float:
    """argparse type: a finite float ('inf' and 'nan' are refused with the usage line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_result_file(out: str | os.PathLike | None) -> None:
    """An evaluation's --out: a new file, or an earlier result of slimtune evaluate/compare to replace; checked
    before any scoring."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; evaluate writes one JSON file: give a file path such as "
                          f"{out / 'results.json'}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    if out.exists():
        try:
            previous = json.loads(out.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not (isinstance(previous, dict) and ({"model", "seconds"} <= set(previous) or "difference" in previous)):
            raise ConfigError(f"--out {out} exists and is not a slimtune evaluation result; choose another --out "
                              "(only an earlier result is replaced)")
