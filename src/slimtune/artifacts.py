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
from dataclasses import dataclass, field
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
    """Validate an output path before any work starts. `overwrite` replaces only a slimtune artifact (a
    directory with a valid slimtune.json) or an empty directory, never other files."""
    out = Path(out)
    if out.name in ("", ".", "..") or out.resolve() == out.resolve().parent:
        raise ArtifactError(f"output path {str(out)!r} does not name a new directory; give a path such as runs/NAME")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path {out} exists and is not a directory")
    if out.exists() and not overwrite:
        raise ArtifactError(
            f"output directory {out} already exists; choose another --out or pass --overwrite"
        )
    if out.exists() and not is_replaceable(out):
        raise ArtifactError(f"--overwrite replaces only a slimtune artifact (a directory with a valid {MANIFEST}) or "
                            f"an empty directory, and {out} is neither; move it away or choose another --out")
    return out


def is_replaceable(path: str | os.PathLike) -> bool:
    """An empty directory, or a slimtune artifact (a directory holding a valid manifest)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    try:
        read_manifest(path)
    except ArtifactError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: str | os.PathLike) -> list[Path]:
    """Remove the `.NAME.tmp-*` / `.NAME.old-*` siblings of `out` that killed writes left (those of a writer
    that is still running are kept); returns what was removed."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for p in out.parent.glob(f".{glob_escape(out.name)}.{kind}-*"):
            owner = p.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if owner.isdigit() and int(owner) != os.getpid() and _pid_alive(int(owner)):
                continue  # another live process is writing it
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _tmp_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block finishes."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = out.parent / _tmp_name(out.name, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        check_output_dir(out, overwrite)  # still replaceable
        trash = out.parent / _tmp_name(out.name, "old")
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temporary sibling and a rename: readers see the old or the new text, never half."""
    path = Path(path)
    tmp = path.with_name(_tmp_name(path.name, "tmp"))
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


PATH_KEYS = ("model", "adapter", "super_adapter", "float_base")  # config values that may name an input artifact


def _input_record(directory: Path, p) -> dict:
    """An input as the manifest stores it: the path as given, its absolute path and its path relative to the
    artifact (so a run directory moved or copied as a whole still finds it), and a content fingerprint."""
    path = Path(str(p))
    if not path.exists():
        return {"path": str(p), "hash": None}
    # The artifact is written in a temporary sibling of its final directory: same parent, same depth.
    return {"path": str(p), "absolute": str(path.resolve()),
            "relative": os.path.relpath(path.resolve(), Path(directory).resolve()), "hash": dir_hash(path),
            "fingerprint": content_print(path)}


def content_print(path: str | os.PathLike) -> str:
    """A fingerprint of what an artifact holds that a re-creation with the same config reproduces: file names
    and sizes, and the manifest's stage, method, config and seed (not its timings)."""
    path = Path(path)
    if path.is_file():
        return dir_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.name == MANIFEST:
            try:
                m = json.loads(f.read_text())
                h.update(json.dumps([m.get(k) for k in ("stage", "method", "config", "seed")], sort_keys=True,
                                    default=str).encode())
            except (ValueError, UnicodeDecodeError, AttributeError):
                h.update(f.read_bytes())
        else:
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
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
    examples this artifact and everything it was made from trained and selected on (lineage.py).
    Config values under PATH_KEYS that name existing paths are recorded as inputs too (recorded_path)."""
    inputs = dict(inputs or {})
    for key in PATH_KEYS:
        value = config.get(key)
        if key not in inputs and isinstance(value, str) and value and Path(value).exists():
            inputs[key] = value
    manifest = {
        "stage": stage,
        "method": method,
        "config": config,
        "inputs": {name: _input_record(Path(directory), p) for name, p in inputs.items()},
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
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); the artifact is damaged") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str) \
            or not isinstance(manifest.get("config", {}), dict):
        raise ArtifactError(f"{path} is not a slimtune manifest (no stage and config); the artifact is damaged")
    return manifest


@dataclass(frozen=True)
class Artifact:
    """A slimtune artifact read back, typed: the stages read these fields, never manifest keys by hand."""

    path: Path
    stage: str
    method: str | None
    config: dict
    metrics: dict
    lineage: list
    seed: int | None
    wall_time_s: float | None
    manifest: dict = field(repr=False)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Artifact":
        """The artifact in `directory` (ArtifactError if it has no valid manifest)."""
        m = read_manifest(directory)
        return cls(Path(directory), m["stage"], m.get("method"), m.get("config") or {}, m.get("metrics") or {},
                   list(m.get("lineage") or []), m.get("seed"), m.get("wall_time_s"), m)

    @classmethod
    def find(cls, path: str | os.PathLike | None) -> "Artifact | None":
        """The artifact at `path`, or None for what is not one (a builtin alias, a hub id, a GGUF file,
        a plain model directory); a damaged manifest still raises."""
        if path is None or not (Path(path) / MANIFEST).is_file():
            return None
        return cls.load(path)

    def input(self, key: str = "model") -> str | None:
        """Where the input recorded as config[key] is now (see recorded_path)."""
        return recorded_path(self.path, key, self.manifest)

    @property
    def base(self) -> str | None:
        """The model this artifact was made from (or, for an adapter, trained on)."""
        return self.input("model")

    @property
    def task(self) -> str | None:
        return self.config.get("task")

    @property
    def split_seed(self) -> int | None:
        return self.config.get("split_seed")


def recorded_path(directory: str | os.PathLike, key: str, manifest: dict | None = None) -> str | None:
    """Where the input behind `config[key]` of an artifact is now: beside the artifact as recorded when it was
    written (a moved run directory), else its absolute path, else the path as given; each candidate must still
    have the recorded fingerprint. An input that is not a path (builtin alias, hub id) comes back unchanged.
    Manifests written before inputs carried relative paths resolve as before."""
    manifest = manifest if manifest is not None else read_manifest(directory)
    value = manifest.get("config", {}).get(key)
    rec = (manifest.get("inputs") or {}).get(key)
    if not isinstance(rec, dict) or str(rec.get("path")) != str(value):
        return value
    candidates = [Path(directory) / rec["relative"]] if rec.get("relative") else []
    candidates += [Path(p) for p in (rec.get("absolute"), rec["path"]) if p]
    changed = None
    for c in candidates:
        if c.exists():
            if rec.get("fingerprint") and content_print(c) != rec["fingerprint"]:
                changed = changed or c
                continue
            return os.path.normpath(c)
    if changed is not None:
        raise ArtifactError(f"the {key} {value} that {directory} was made from has changed since (its fingerprint "
                            f"differs at {changed}); pass the {key} explicitly, or re-create {directory}")
    return value


def check_safetensors(path: str | os.PathLike) -> None:
    """A safetensors file whose header parses and whose size is what the header says (not truncated)."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            problem = "its header is cut off"
        else:
            try:
                header = json.loads(f.read(n))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                problem = "its header is not valid"
            else:
                expected = 8 + n + max(ends, default=0)
                if size != expected:
                    problem = f"it holds {size} bytes where its header describes {expected}"
    if problem:
        raise ArtifactError(f"{path} is corrupt or truncated ({problem}); re-create it")


def check_artifact(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete, undamaged artifact: a valid manifest, JSON files that parse, and
    safetensors files of the size their headers give. Raises ArtifactError naming the damage."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for f in sorted(directory.glob("*.json")):
        try:
            json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{f} is not valid JSON ({e}); the artifact is damaged") from e
    for f in sorted(directory.rglob("*.safetensors")):
        check_safetensors(f)
    return manifest
