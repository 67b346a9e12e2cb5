"""One writer per run directory, and distinct identities for the workers of one search.

Both use `fcntl.flock` on a lock file: the kernel drops the lock when its process ends, however it
ends (kill -9 included), so a lock is never left stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .errors import ArtifactError

RUN_LOCK = "lock"  # inside a run directory's state folder (.recipe)


def _try_lock(path: Path) -> IO | None:
    """The open lock file, locked exclusively; None if another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


@contextlib.contextmanager
def run_lock(state_dir: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """Hold the exclusive lock of a run directory (its state folder `state_dir`) for the block; a second
    process gets an ArtifactError naming the holder at once."""
    path = Path(state_dir) / RUN_LOCK
    f = _try_lock(path)
    if f is None:
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise ArtifactError(f"{what} {Path(state_dir).parent} is in use by another slimtune process ({holder}); "
                            "wait until it finishes, or use another --out")
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        f.seek(0)
        f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@dataclass
class WorkerSlot:
    """A search worker's identity: the lowest slot no live worker of the same run directory holds (so a
    resumed single worker is slot 0 again), plus the host and run directory when the study lives in a storage
    given explicitly (which workers elsewhere may share)."""

    index: int
    host: str | None
    handle: IO | None = None

    def seed(self, seed: int) -> int:
        """The sampler seed of this worker: `seed` itself for slot 0 of a local study (one worker reproduces
        an unshared search), else a hash of the seed and the identity, so that workers do not repeat each
        other's configurations."""
        if self.index == 0 and self.host is None:
            return seed
        digest = hashlib.sha256(f"{seed}:{self.host or ''}:{self.index}".encode()).hexdigest()
        return int(digest[:8], 16) % (2**31 - 1)

    @property
    def name(self) -> str:
        return f"{self.host.split(':', 1)[0] + ':' if self.host else ''}slot{self.index}"

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def claim_worker_slot(run_dir: str | os.PathLike, shared_storage: bool = False, limit: int = 4096) -> WorkerSlot:
    """Lock the lowest free `.worker-N.lock` in `run_dir` (kept until release() or the process ends)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    host = f"{socket.gethostname()}:{run_dir.resolve()}" if shared_storage else None
    for i in range(limit):
        handle = _try_lock(run_dir / f".worker-{i}.lock")
        if handle is not None:
            return WorkerSlot(i, host, handle)
    raise ArtifactError(f"{run_dir}: more than {limit} search workers at once")
