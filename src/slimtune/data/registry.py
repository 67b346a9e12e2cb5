"""Task specs to Tasks: the registry of named tasks and the dispatch on spec forms.

Loaders live in their own modules (tasks.py: polarity; gsm.py; bigbench.py; openai_evals.py; bbc_news.py;
suites.py; files.py)
and never import this one; it imports them all and assembles TASKS.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Callable

from ..errors import DataError
from . import bbc_news, bigbench, gsm, openai_evals, suites
from .files import FILE_SUFFIXES, load_file_task, load_hf_task
from .tasks import Task, load_polarity

# Named tasks: name -> loader(seed=..., **options) -> Task.
TASKS: dict[str, Callable[..., Task]] = {
    "polarity": load_polarity,
    "bbc-news": bbc_news.load_bbc_news,
    gsm.NAME: gsm.load_gsm_symbolic,
    **{f"bigbench:{name}": functools.partial(bigbench.load_bigbench, name) for name in bigbench.FEATURED},
    **{f"evals:{name}": functools.partial(openai_evals.load_openai_evals, name) for name in openai_evals.DATA_SETS},
    **suites.SUITES,
}
DEFAULT_TASK = "polarity"

SPEC_FORMS = ("a task name", "bigbench:<task>[:<subtask>]", "evals:<data set>", "hf:<name>[:<config>] or hf:<local dir or file>",
              "a .jsonl/.json/.csv file")


def _call(loader: Callable[..., Task], spec: str, seed: int, kwargs: dict) -> Task:
    """Call a loader, turning an unknown option into a DataError that lists the accepted ones."""
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            accepted = [n for n, p in params.items() if n != "seed" and p.kind is not p.VAR_POSITIONAL
                        and p.default is not p.empty]
            raise DataError(f"task {spec}: unknown option(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(accepted) or 'none'}")
    return loader(seed=seed, **kwargs)


def load_task(spec: str | os.PathLike, seed: int = 0, **kwargs) -> Task:
    """A task from a spec, its splits fixed by the split seed `seed` (see _load_task)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"a task's split seed must be an integer, got {seed!r}")
    return _load_task(spec, seed, **kwargs).with_spec(os.fspath(spec), seed, kwargs)


def _load_task(spec: str | os.PathLike, seed: int = 0, **kwargs) -> Task:
    """A task from a spec: a registered name (see TASKS), "bigbench:<task>[:<subtask>]", "evals:<data set>",
    "hf:<name>[:<config>]" / "hf:<local path>", or a .jsonl/.json/.csv file path.

    `seed` is the split seed: it fixes the split (and generated content), never the training; `kwargs` go to the loader, e.g.
    train_size=... for gsm_symbolic, fractions=(0.6, 0.15) or lettered=True for file tasks.
    """
    key = os.fspath(spec)
    if key in TASKS:
        return _call(TASKS[key], key, seed, kwargs)
    if key.startswith("bigbench:"):
        return _call(functools.partial(bigbench.load_bigbench, key[len("bigbench:"):]), key, seed, kwargs)
    if key.startswith("evals:"):
        return _call(functools.partial(openai_evals.load_openai_evals, key[len("evals:"):]), key, seed, kwargs)
    if key.startswith("hf:"):
        return _call(functools.partial(load_hf_task, key[len("hf:"):]), key, seed, kwargs)
    path = Path(key).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"task file {path} does not exist")
        return _call(functools.partial(load_file_task, path), key, seed, kwargs)
    raise DataError(f"unknown task {key!r}; known tasks: {', '.join(sorted(TASKS))}; "
                    f"a task spec is one of: {'; '.join(SPEC_FORMS)}")
