"""Artifact directories: written atomically, described by a `slimtune.json` manifest.

An artifact is complete exactly when its directory exists under its final name: every stage
writes into a hidden temporary sibling and renames it into place at the end, so a crash never
leaves a half-written directory that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError

MANIFEST = "slimtune.json"
STATE_DIR = ".recipe"  # a recipe run directory's state: per-stage fingerprints and the recipe
RECIPE_FILE = "recipe.json"  # the validated recipe, written into STATE_DIR by `run`


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("slimtune", "torch", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output path before any work starts."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ArtifactError(
            f"output directory {out} already exists; choose another --out or pass --overwrite"
        )
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path {out} exists and is not a directory")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block finishes."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temporary sibling and a rename: readers see the old or the new text, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def dir_hash(path: str | os.PathLike) -> str:
    """A cheap content fingerprint: names, sizes and the manifest (not full file contents)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}".encode())
        return h.hexdigest()[:16]
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
        if f.name == MANIFEST:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def write_manifest(
    directory: Path,
    *,
    stage: str,
    method: str,
    config: dict[str, Any],
    inputs: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    started: float | None = None,
    seed: int | None = None,
    lineage: list[dict] | None = None,
) -> dict[str, Any]:
    """Write `slimtune.json` into an artifact directory (normally the temporary one). `lineage`: the
    examples this artifact and everything it was made from trained and selected on (lineage.py)."""
    manifest = {
        "stage": stage,
        "method": method,
        "config": config,
        "inputs": {
            name: {"path": str(p), "hash": dir_hash(p) if Path(p).exists() else None}
            for name, p in (inputs or {}).items()
        },
        "metrics": metrics or {},
        "seed": seed,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_time_s": round(time.time() - started, 3) if started else None,
        "lineage": lineage or [],
    }
    write_json_atomic(Path(directory) / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a slimtune artifact (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); the artifact is damaged") from e
