"""Multi-objective sub-adapter search on optuna: NSGA-II (or another sampler) over the rank groups of
an elastic super-adapter, with trials persisted in an optuna storage (SQLite in the run directory
by default, any RDB URL for several workers or machines).

A worker loads the base model and the super-adapter once; a trial only sets the active ranks
(`SearchSpace.apply`) and evaluates a fixed validation slice. The trial budget is exact across
workers: a trial runs only if the completed trials plus the running trials created before it
(trial numbers are assigned by the storage) are fewer than the budget; any other is pruned at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from .elastic import SearchSpace

# objective name -> optuna direction
OBJECTIVES = {"accuracy": "maximize", "loss": "minimize", "params": "minimize", "nonzero": "minimize",
              "total_params": "minimize", "macs": "minimize",
              "latency_prefill": "minimize", "latency_decode": "minimize"}
COUNTS = ("params", "nonzero", "total_params", "macs")  # the counted costs
SIZES = (*COUNTS, "latency_prefill", "latency_decode")  # the cost objectives (latency: measured ms, nas/latency.py)
SAMPLERS = ("nsga2", "nsga3", "tpe", "random")


def check_objectives(objectives) -> list[str]:
    objectives = [objectives] if isinstance(objectives, str) else list(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or not objectives:
        raise ConfigError(f"unknown objective(s) {unknown or objectives}; choose from {', '.join(OBJECTIVES)} "
                          "(e.g. accuracy,params)")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"objective listed twice in {objectives}")
    return objectives


def make_sampler(name: str, seed: int, population: int | None):
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population or 16)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=population or 16)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def _create_study(storage_url: str, study_name: str, objectives: list[str], sampler):
    import warnings

    import optuna

    with warnings.catch_warnings():  # heartbeats are marked experimental; they are what makes workers safe
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A worker that dies leaves its trial RUNNING; after the grace period another worker marks it
        # failed and re-enqueues its configuration once.
        storage = optuna.storages.RDBStorage(
            storage_url, engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else None,
            heartbeat_interval=30, grace_period=90,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    return optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, load_if_exists=True,
                               directions=[OBJECTIVES[o] for o in objectives])


@contextlib.contextmanager
def _creation_lock(storage_url: str):
    """Workers on one machine sharing a SQLite file create its tables one at a time (an OS file lock)."""
    if not storage_url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(storage_url[len("sqlite:///"):] + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(storage_url: str, study_name: str, objectives: list[str], sampler):
    """Create or load the study; a URL that cannot be opened is a ConfigError naming it."""
    for attempt in range(5):
        try:
            with _creation_lock(storage_url):
                study = _create_study(storage_url, study_name, objectives, sampler)
            break
        except Exception as e:
            # Workers started together race to create the tables (and schema version row) of a new
            # database; the loser retries and then finds them.
            racing = type(e).__name__ == "IntegrityError" or any(
                m in str(e) for m in ("already exists", "database is locked"))
            if attempt < 4 and racing:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"cannot open the search storage {storage_url!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''} (use a database URL optuna supports, e.g. "
                              "sqlite:///path/search.db or postgresql://user@host/db)") from e
    want = [OBJECTIVES[o] for o in objectives]
    have = [d.name.lower() for d in study.directions]
    if have != want:
        raise ConfigError(f"study {study_name!r} in {storage_url} optimises {have}, not {want} ({objectives}); "
                          "use another --out/--storage or the same objectives")
    return study


@dataclass
class Searcher:
    """Runs trials of one study in this process. `evaluate(config) -> {objective: value}`."""

    study: object
    space: SearchSpace
    objectives: list[str]
    evaluate: Callable[[dict[str, int]], dict[str, float]]
    budget: int
    apply: Callable[[dict[str, int]], None]
    worker: str = "main"
    ran: list[int] = field(default_factory=list)
    # n completed trials -> the sampler for the next trial: its random state then depends only on the
    # study's history, so a search resumed after a kill asks for the trials an uninterrupted one would
    reseed: Callable[[int], object] | None = None

    def enqueue(self, heuristics: dict[str, dict[str, int]]) -> None:
        """The heuristic configurations become the first trials (once per study, whoever comes first)."""
        for label, config in heuristics.items():
            self.study.enqueue_trial(config, user_attrs={"heuristic": label}, skip_if_exists=True)

    def _within_budget(self, trial) -> bool:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        ahead = sum(1 for t in trials if t.state == TrialState.COMPLETE
                    or (t.state == TrialState.RUNNING and t.number < trial.number))
        return ahead < self.budget

    def objective(self, trial):
        import optuna

        if not self._within_budget(trial):
            trial.set_user_attr("reason", "budget reached")
            raise optuna.TrialPruned()
        t0 = time.perf_counter()
        config = {g: trial.suggest_categorical(g, d.choices) for g, d in self.space.dimensions.items()}
        self.apply(config)
        t1 = time.perf_counter()
        values = self.evaluate(config)
        t2 = time.perf_counter()
        trial.set_user_attr("switch_s", t1 - t0)
        trial.set_user_attr("eval_s", t2 - t1)
        trial.set_user_attr("worker", self.worker)
        self.ran.append(trial.number)
        return [values[o] for o in self.objectives]

    def done(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def run(self) -> None:
        # Each worker asks for at most the budget; pruned over-budget trials end it.
        while self.done() < self.budget:
            before = len(self.ran)
            if self.reseed is not None:
                self.study.sampler = self.reseed(self.done())
            self.study.optimize(self.objective, n_trials=1, gc_after_trial=False)
            if len(self.ran) == before and self.done() < self.budget:
                time.sleep(0.5)  # others hold the remaining budget: wait for them or for a retry


def completed_trials(study, objectives: list[str]) -> list[dict]:
    """Every completed trial as a JSON-ready record, by trial number."""
    from optuna.trial import TrialState

    out = []
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        total = (t.datetime_complete - t.datetime_start).total_seconds()
        out.append({"trial": t.number, "config": dict(t.params), "objectives": dict(zip(objectives, t.values)),
                    "heuristic": t.user_attrs.get("heuristic"), "worker": t.user_attrs.get("worker"),
                    "eval_s": t.user_attrs.get("eval_s"), "switch_s": t.user_attrs.get("switch_s"),
                    "trial_s": total})
    return out


def pareto_front(records: list[dict], objectives: list[str]) -> list[dict]:
    """Records no other record dominates (at least as good in every objective, better in one)."""
    sign = {o: (1.0 if OBJECTIVES[o] == "minimize" else -1.0) for o in objectives}

    def key(r):
        return [sign[o] * r["objectives"][o] for o in objectives]

    front = []
    for r in records:
        kr = key(r)
        dominated = any(all(a <= b for a, b in zip(key(s), kr)) and key(s) != kr for s in records)
        if not dominated:
            front.append(r)
    return front


def knee(front: list[dict], objectives: list[str]) -> dict:
    """The front point nearest the ideal point after scaling each objective to [0, 1]."""
    def scaled(r, o):
        values = [f["objectives"][o] for f in front]
        lo, hi = min(values), max(values)
        x = 0.0 if hi == lo else (r["objectives"][o] - lo) / (hi - lo)
        return x if OBJECTIVES[o] == "minimize" else 1.0 - x

    return min(front, key=lambda r: (math.dist([scaled(r, o) for o in objectives], [0.0] * len(objectives)), r["trial"]))


BUDGET_TOLERANCE = 0.01  # budget=F picks: the cost may exceed F of the maximal configuration's by this much


def pick_budget(records: list[dict], objectives: list[str], how: str, scored: int | None = None) -> dict:
    """budget=F[:T]: among the trials costing at most F·(1 + T) of the maximal configuration's cost (the first
    cost objective; T default BUDGET_TOLERANCE), the most accurate; ties go to the costlier one, which uses more
    of the budget, then to the earlier trial. With `scored` (validation examples per trial) an accuracy within
    one standard error of the best, sqrt(p(1 - p) / scored), counts as a tie: on a small slice, noise larger
    than the sub-networks' differences otherwise picks a far smaller model (bench/RESULTS.md, EFTNAS). Among
    those ties, costs within T·(maximal cost) of the costliest tie's count as equal and the more accurate trial
    wins: a fraction of a percent more cost is no reason to take a trial that scored lower."""
    size = next((o for o in objectives if o in SIZES), None)
    if size is None:
        raise ConfigError(f"{how}: a budget needs a cost objective ({', '.join(SIZES)}) in the search")
    fraction, _, tol = how.split("=", 1)[1].partition(":")
    try:
        fraction, tol = float(fraction), float(tol) if tol else BUDGET_TOLERANCE
    except ValueError:
        raise ConfigError(f"--pick {how!r}: expected budget=<fraction of the maximal cost>, e.g. budget=0.5 (or "
                          "budget=0.5:0.02 with a relative tolerance)") from None
    if not 0 < fraction <= 1 or not 0 <= tol < 0.5:
        raise ConfigError(f"--pick {how!r}: the fraction lies in (0, 1] and the tolerance in [0, 0.5)")
    maximal = [r for r in records if r.get("heuristic") == "maximal"] or records
    full = max(r["objectives"][size] for r in maximal)
    within = [r for r in records if r["objectives"][size] <= fraction * full * (1 + tol)]
    if not within:
        smallest = min(r["objectives"][size] for r in records) / full
        raise ConfigError(f"no trial of this search costs at most {fraction:g} of the maximal {size} (+{tol:.0%}); "
                          f"the cheapest costs {smallest:.3f}. Run more trials, or build the space with this budget "
                          "so that its configuration is one of the first trials")
    quality = next((o for o in objectives if o in ("accuracy", "loss")), None)
    if quality is None:
        return min(within, key=lambda r: (-r["objectives"][size], r["trial"]))
    if quality == "accuracy" and scored:
        best = max(r["objectives"]["accuracy"] for r in within)
        noise = math.sqrt(best * (1.0 - best) / scored)
        tied = [r for r in within if r["objectives"]["accuracy"] >= best - noise - 1e-12]
        costliest = max(r["objectives"][size] for r in tied)
        near = [r for r in tied if r["objectives"][size] >= costliest - tol * full]
        return min(near, key=lambda r: (-r["objectives"]["accuracy"], -r["objectives"][size], r["trial"]))
    sign = -1.0 if OBJECTIVES[quality] == "maximize" else 1.0
    return min(within, key=lambda r: (sign * r["objectives"][quality], -r["objectives"][size], r["trial"]))


def pick(records: list[dict], front: list[dict], objectives: list[str], how: str, scored: int | None = None) -> dict:
    """best-accuracy | smallest | knee | trial=N | budget=F[:T] (pick_budget; `scored`: validation examples per
    trial, for its noise)."""
    if how.startswith("budget="):
        return pick_budget(records, objectives, how, scored)
    if how.startswith("trial="):
        try:
            number = int(how.split("=", 1)[1])
        except ValueError:
            raise ConfigError(f"--pick {how!r}: expected trial=<number>") from None
        for r in records:
            if r["trial"] == number:
                return r
        raise ConfigError(f"trial {number} is not a completed trial of this search "
                          f"(completed: {', '.join(str(r['trial']) for r in records[:20])})")
    quality = next((o for o in objectives if o in ("accuracy", "loss")), None)
    size = next((o for o in objectives if o in SIZES), None)
    if how == "best-accuracy":
        if quality is None:
            raise ConfigError("best-accuracy needs an accuracy or loss objective in the search")
        sign = -1.0 if OBJECTIVES[quality] == "maximize" else 1.0
        return min(front, key=lambda r: (sign * r["objectives"][quality], r["objectives"].get(size, 0), r["trial"]))
    if how == "smallest":
        if size is None:
            raise ConfigError(f"smallest needs a cost objective ({', '.join(SIZES)}) in the search")
        sign = -1.0 if quality and OBJECTIVES[quality] == "maximize" else 1.0
        return min(front, key=lambda r: (r["objectives"][size], sign * r["objectives"].get(quality, 0), r["trial"]))
    if how == "knee":
        return knee(front, objectives)
    raise ConfigError(f"unknown pick {how!r}; choose best-accuracy, smallest, knee, trial=N or budget=F")


def plot_front(records: list[dict], front: list[dict], objectives: list[str], path) -> None:
    """PNG: every trial, the Pareto front as a step line, the heuristic configurations labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = next((o for o in objectives if o in SIZES), objectives[-1])
    quality = next((o for o in objectives if o != size), None)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if quality is None:  # one objective: value per trial
        ax.plot([r["trial"] for r in records], [r["objectives"][size] for r in records], "o", color="0.6")
        ax.set_xlabel("trial")
        ax.set_ylabel(size)
    else:
        scale = 1e6 if size in COUNTS else 1.0
        xs = lambda rs: [r["objectives"][size] / scale for r in rs]  # noqa: E731
        ys = lambda rs: [r["objectives"][quality] for r in rs]  # noqa: E731
        ax.scatter(xs(records), ys(records), s=18, color="0.65", label="trials")
        line = sorted(front, key=lambda r: r["objectives"][size])
        ax.plot(xs(line), ys(line), "-o", color="tab:blue", ms=5, drawstyle="steps-post", label="Pareto front")
        for r in records:
            if r["heuristic"]:
                ax.scatter(xs([r]), ys([r]), s=70, marker="*", color="tab:red", zorder=3)
                ax.annotate(r["heuristic"], (xs([r])[0], ys([r])[0]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8, color="tab:red")
        ax.set_xlabel(f"{size} (millions)" if scale != 1.0 else f"{size} (ms)" if size.startswith("latency") else size)
        ax.set_ylabel(f"validation {quality}")
        ax.legend(loc="best", fontsize=8)
    ax.set_title(f"sub-adapter search: {len(records)} trials, {len(front)} on the front", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
