"""A search run directory: its files, the settings that a resumed run or another worker must share,
the results it writes, and the trial a later `extract --from-search` picks from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..artifacts import MANIFEST, read_manifest, recorded_path, write_json_atomic, write_text_atomic
from ..errors import ArtifactError, ConfigError
from .search import completed_trials, pareto_front, pick, plot_front

SEARCH_CONFIG, SEARCH_DB, TRIALS_FILE, PARETO_FILE, PARETO_PLOT = (
    "search_config.json", "search.db", "trials.jsonl", "pareto.json", "pareto.png")


def is_search_file(name: str) -> bool:
    """Files a search run directory holds (others starting a worker on it may have written them)."""
    return name.startswith(".") or name.startswith(SEARCH_DB) or name in (
        SEARCH_CONFIG, TRIALS_FILE, PARETO_FILE, PARETO_PLOT, MANIFEST)


def prepare(out: Path, settings: dict, storage: str | None) -> str:
    """Check that `out` is new or holds a search with the same settings (the budget may grow); return
    the storage URL (default: SQLite inside `out`)."""
    config_path = out / SEARCH_CONFIG
    if config_path.is_file():  # resuming, or another worker
        previous = json.loads(config_path.read_text())
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ConfigError(f"{out} holds a search with other settings "
                              f"({', '.join(f'{k}: {previous.get(k)!r}' for k in changed)}); "
                              "use another --out, or the same settings to resume it")
    elif out.exists() and any(not is_search_file(f.name) for f in out.iterdir()):
        raise ConfigError(f"{out} exists and is not a search run directory; choose another --out")
    storage = storage or _default_storage(out)
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return storage


def worker_slot(out: Path, storage: str):
    """This worker's slot in the run directory (locking.WorkerSlot): its sampler seed differs from every other
    live worker's. A storage other than the default SQLite file in `out` may be shared with workers elsewhere,
    so there the identity adds the host and directory."""
    from ..locking import claim_worker_slot

    return claim_worker_slot(out, shared_storage=storage != _default_storage(out))


def _default_storage(out: Path) -> str:
    return f"sqlite:///{(out / SEARCH_DB).resolve()}"


def save_settings(out: Path, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SEARCH_CONFIG).is_file():
        write_json_atomic(out / SEARCH_CONFIG, settings)


def write_results(out: Path, study, objectives: list[str]) -> tuple[list[dict], list[dict]]:
    """trials.jsonl, pareto.json and pareto.png of the study's completed trials; returns (records, front)."""
    records = completed_trials(study, objectives)
    front = pareto_front(records, objectives)
    write_text_atomic(out / TRIALS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    write_json_atomic(out / PARETO_FILE, {"objectives": objectives, "front": front})
    tmp_png = out / f".{PARETO_PLOT}.tmp-{os.getpid()}.png"
    plot_front(records, front, objectives, tmp_png)
    os.replace(tmp_png, out / PARETO_PLOT)
    return records, front


def picked_trial(search_dir: str | Path, choice: str | None) -> tuple[str, dict, dict]:
    """(super-adapter, configuration, trial record) of the trial `choice` picks in a finished search
    run (None: the knee of the Pareto front)."""
    choice = choice or "knee"
    search_dir = Path(search_dir)
    config_path, trials_path = search_dir / SEARCH_CONFIG, search_dir / TRIALS_FILE
    if not config_path.is_file() or not trials_path.is_file():
        raise ArtifactError(f"{search_dir} is not a finished search run (no {SEARCH_CONFIG} / {TRIALS_FILE}); "
                            "run `slimtune search` first")
    settings = json.loads(config_path.read_text())
    records = [json.loads(line) for line in trials_path.read_text().splitlines() if line.strip()]
    if not records:
        raise ArtifactError(f"{trials_path} holds no completed trials")
    manifest = read_manifest(search_dir) if (search_dir / MANIFEST).is_file() else None
    scored = (manifest or {}).get("metrics", {}).get("validation_examples")
    chosen = pick(records, pareto_front(records, settings["objectives"]), settings["objectives"], choice, scored)
    adapter = recorded_path(search_dir, "adapter", manifest) if manifest else settings["adapter"]
    return adapter, chosen["config"], chosen
