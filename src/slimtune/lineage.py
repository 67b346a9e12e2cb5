"""Which examples an artifact's lineage trained and selected on, and the check that keeps every
reported accuracy on examples outside them.

An artifact's manifest carries `lineage`: one record per use of a task's examples by any stage that
led to it (its own and, inherited, those of every artifact it was made from):

    {"stage": "finetune", "artifact": "runs/adapter", "use": "train", "task": "polarity",
     "split_seed": 0, "split": "train", "n": 120, "digest": "<sha256 of the sorted ids>", "ids": [...]}

`use` is "train" (fine-tuning) or "select" (a validation slice that chose a sub-adapter or scored a
search). Ids are `Example.id` (a hash of the prompt unless the loader gives one), so an overlap is
found whatever the task spec, split seed or suite the examples came through.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Sequence

from .artifacts import Artifact
from .data.registry import load_task
from .data.tasks import Example, Task
from .errors import SlimtuneError

USES = ("train", "select")


class LeakageError(SlimtuneError):
    """An evaluation would report on examples that its model's lineage trained or selected on."""


def record(stage: str, use: str, task: Task, split: str, examples: Sequence[Example],
           artifact: str | os.PathLike | None = None) -> dict:
    """One lineage record: `stage` used `examples` (of `task`'s `split`) for `use`."""
    if use not in USES:
        raise ValueError(f"lineage use must be one of {USES}, got {use!r}")
    ids = sorted({ex.id for ex in examples})
    return {"stage": stage, "artifact": str(artifact) if artifact is not None else None, "use": use,
            "task": task.spec, "members": list(task.members), "split_seed": task.split_seed, "split": split,
            "n": len(ids),
            "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16], "ids": ids}


def of(path: str | os.PathLike | None) -> list[dict]:
    """The lineage recorded in an artifact (empty for a builtin alias, a GGUF file or a hub id)."""
    artifact = Artifact.find(path)
    return artifact.lineage if artifact else []


def combine(*lineages: Iterable[dict]) -> list[dict]:
    """The records of all lineages, each use of the same examples once."""
    out, seen = [], set()
    for lineage in lineages:
        for rec in lineage:
            key = (rec["use"], rec["task"], rec["split"], rec["digest"])
            if key not in seen:
                seen.add(key)
                out.append(rec)
    return out


def with_artifact(lineage: Iterable[dict], artifact: str | os.PathLike) -> list[dict]:
    """Records made before their artifact's final path was known, pointed at it."""
    return [{**rec, "artifact": rec.get("artifact") or str(artifact)} for rec in lineage]


def split_seed_for(lineage: Iterable[dict], task_spec: str) -> int | None:
    """The split seed the lineage used for `task_spec`, alone or as a member of a suite (so evaluation
    reads the same split), if any."""
    seeds = {rec["split_seed"] for rec in lineage if task_spec == rec["task"] or task_spec in rec.get("members", ())}
    if len(seeds) > 1:
        raise LeakageError(f"the lineage used task {task_spec} with several split seeds ({sorted(seeds)}), so no split "
                           "of it is held out from all of them; evaluate on another task")
    return seeds.pop() if seeds else None


def overlap(lineage: Iterable[dict], examples: Sequence[Example]) -> list[dict]:
    """For each lineage record that shares examples with `examples`: the record (without its ids) and the
    shared ids."""
    wanted = {ex.id for ex in examples}
    found = []
    for rec in lineage:
        shared = sorted(wanted.intersection(rec["ids"]))
        if shared:
            found.append({**{k: v for k, v in rec.items() if k != "ids"}, "shared": shared})
    return found


def check_held_out(lineage: Sequence[dict], task: Task, split: str, examples: Sequence[Example],
                   allow_overlap: bool = False) -> dict:
    """What an evaluation result says about its examples' independence from the model's lineage.

    Raises LeakageError naming the overlap, unless `allow_overlap`; then the returned dict carries
    the overlap and a warning that the result says so.
    """
    found = overlap(lineage, examples)
    summary = {"checked_against": [{k: rec[k] for k in ("stage", "artifact", "use", "task", "split_seed", "split", "n")}
                                   for rec in lineage],
               "overlap": len({i for rec in found for i in rec["shared"]})}
    if not found:
        return summary
    by_id = {ex.id: ex for ex in examples}
    lines = [f"{len(rec['shared'])} were {'trained' if rec['use'] == 'train' else 'selected'} on by {rec['stage']} "
             f"({rec['artifact'] or 'no path'}: task {rec['task']}, split seed {rec['split_seed']}, {rec['split']} split)"
             for rec in found]
    first = by_id[found[0]["shared"][0]].prompt.strip().replace("\n", " ")[:70]
    message = (f"{summary['overlap']} of the {len(examples)} {task.spec} {split} examples (split seed {task.split_seed}) "
               f"are in the model's lineage: {'; '.join(lines)}; e.g. {first!r}. Evaluate on the split the lineage "
               "held out (the default split seed reads it from the lineage), or pass --allow-overlap "
               "(allow_overlap=True) to report it anyway, marked as contaminated")
    if not allow_overlap:
        raise LeakageError(message)
    return {**summary, "warning": "CONTAMINATED: " + message,
            "overlap_by_use": {u: len({i for rec in found if rec["use"] == u for i in rec["shared"]}) for u in USES}}


def task_split(task: str | Task, split_seed: int | None, history: list[dict] = ()) -> Task:
    """The task with the split seed given, else the one the lineage used for it (else 0): evaluation
    and selection read the split that fine-tuning held out."""
    if isinstance(task, Task):
        return task
    if split_seed is None:
        split_seed = split_seed_for(list(history), str(task))
    return load_task(task, seed=0 if split_seed is None else split_seed)
