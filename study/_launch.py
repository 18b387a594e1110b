"""Launching and resuming studies: Ray Tune runs the trials, Optuna samples and prunes them.

One Tune trial trains one configuration over ``training.seeds`` seeds at once with the
population trainer (:class:`NaluTrainable`, a thin adapter). Everything a resume needs lives in
the Optuna storage and the study folder, never in Tune's experiment state:

- the budget is counted per task × op as COMPLETE + PRUNED Optuna trials;
- a trial left RUNNING by a dead driver is marked FAIL and its parameters are enqueued again
  (once), with its checkpoint folder, so the re-run continues from its last checkpoint;
- the trainer state is saved every ``training.checkpoint_every`` evaluations into
  ``<study>/checkpoints/<task>-<op>/trial-<n>/``; a retry (``max_failures``) restarts from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from nalu_core import TaskConfig
from study._errors import StudyError
from study._pruning import METRIC, OptunaPruningScheduler, TaskGridSearcher, TaskSearch
from study._settings import Settings, redact
from study._spec import (
    StudySpec,
    check_schedulable,
    load_space,
    local_capacity,
    task_key,
)
from study._studies import (
    COUNTED,
    SPEC,
    TaskSummary,
    check_stores,
    driver_alive,
    open_storage,
    optuna_study_name,
    read_record,
    summarize,
    write_record,
)
from study._trainable import NaluTrainable, _import_tune

# effectively unlimited when only a time limit bounds the study
_UNLIMITED = 10**9

Echo = Callable[[str], None]


# --- the driver --------------------------------------------------------------------------


@dataclass
class _Define:
    """Optuna define-by-run for one task × op: the space's point -> a RunConfig for Tune."""

    space: Any
    task: TaskConfig
    train: Mapping[str, Any]
    checkpoint_root: Path
    constants: Mapping[str, Any]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        point = self.space.suggest(trial)
        run_config = self.space.to_run_config(point, task=self.task, train=dict(self.train))
        key = task_key(self.task)
        folder = trial.user_attrs.get("checkpoint_dir")
        if not folder:
            folder = str(self.checkpoint_root / key / f"trial-{trial.number}")
            trial.set_user_attr("checkpoint_dir", folder)
        trial.set_user_attr("task", key)
        trial.set_user_attr("run_config", run_config.to_dict())
        return {
            **self.constants,
            "run_config": run_config.to_dict(),
            "task_key": key,
            "optuna_number": trial.number,
            "checkpoint_dir": folder,
        }


def reconcile_storage(
    storage: optuna.storages.BaseStorage, study: str, keys: list[str]
) -> dict[str, int]:
    """Marks trials a dead driver left RUNNING as FAIL and enqueues each FAIL trial once more.

    The re-enqueued trial keeps the parameters and the checkpoint folder, so it continues from
    the last checkpoint. Which FAIL trials were re-enqueued is kept in the study's user
    attribute ``requeued`` (written before enqueueing: a crash in between loses one re-run,
    which the per-task quota then fills with a fresh sample, instead of duplicating one).
    """
    counts = {"failed_running": 0, "requeued": 0}
    for key in keys:
        name = optuna_study_name(study, key)
        try:
            ot_study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        study_id = storage.get_study_id_from_name(name)
        requeued = set(ot_study.user_attrs.get("requeued", []))
        for trial in ot_study.get_trials(deepcopy=False):
            state = trial.state
            if state == TrialState.RUNNING:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                counts["failed_running"] += 1
                state = TrialState.FAIL
            if state != TrialState.FAIL or trial.number in requeued:
                continue
            requeued.add(trial.number)
            ot_study.set_user_attr("requeued", sorted(requeued))
            attrs = {"requeued_from": trial.number}
            if trial.user_attrs.get("checkpoint_dir"):
                attrs["checkpoint_dir"] = trial.user_attrs["checkpoint_dir"]
            ot_study.enqueue_trial(dict(trial.params), user_attrs=attrs)
            counts["requeued"] += 1
    return counts


def _fail_running(storage: optuna.storages.BaseStorage, study: str, keys: list[str]) -> None:
    """After a launch, nothing of it still runs: RUNNING leftovers (time limit) become FAIL."""
    for key in keys:
        name = optuna_study_name(study, key)
        try:
            ot_study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        study_id = storage.get_study_id_from_name(name)
        for trial in ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _trial_count(storage: optuna.storages.BaseStorage, study: str, key: str) -> int:
    """Trials the task's Optuna study holds already (0 for a new one)."""
    try:
        study_id = storage.get_study_id_from_name(optuna_study_name(study, key))
    except KeyError:
        return 0
    return int(storage.get_n_trials(study_id))


def quotas(
    storage: optuna.storages.BaseStorage, spec: StudySpec, *, num_samples: int | None
) -> dict[str, int]:
    """Trials still to run per task × op: the budget minus COMPLETE and PRUNED ones."""
    out = {}
    for summary in summarize(storage, spec.name, spec.task_keys()):
        done = sum(summary.counts.get(s.name, 0) for s in COUNTED)
        out[summary.key] = _UNLIMITED if num_samples is None else max(0, num_samples - done)
    return out


@dataclass
class LaunchResult:
    name: str
    study_dir: Path
    tasks: list[TaskSummary]
    wall_seconds: float
    trials_run: int
    stats: dict[str, float] = field(default_factory=dict)
    experiment_id: str | None = None  # the study's MLflow experiment, when it was tracked


class _Progress(_import_tune().Callback):  # type: ignore[misc]
    """Live progress: running/done/pruned/failed and the best so far; keeps study.json fresh."""

    def __init__(
        self,
        *,
        echo: Echo,
        scheduler: OptunaPruningScheduler,
        heartbeat: Callable[[], None],
        every: float = 5.0,
        total: int | None = None,
        time_left: float | None = None,
    ) -> None:
        self.total = total
        self.time_left = time_left
        self.echo = echo
        self.scheduler = scheduler
        self.heartbeat = heartbeat
        self.every = every
        self.started = time.monotonic()
        self.last_print = 0.0
        self.running: set[str] = set()
        self.done = self.pruned = self.failed = 0
        self.best: tuple[float, str] | None = None
        self.trial_wall: list[float] = []
        self.trial_train: list[float] = []
        # (monotonic time, trials running from then on): for the slots left idle at the end
        self.occupancy: list[tuple[float, int]] = []
        self.last_start: int | None = None  # index into occupancy
        # per running trial: (label, step, total steps, wall seconds, step it restored from)
        self.trial_steps: dict[str, tuple[str, int, int, float, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl; the console and the record stay here
        state = dict(self.__dict__)
        state["echo"] = state["heartbeat"] = _nothing
        return state

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.last_start = len(self.occupancy)
        self.occupancy.append((time.monotonic(), len(self.running)))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "step" in result and "total_steps" in result:
            label = f"{trial.config.get('task_key')} #{trial.config.get('optuna_number')}"
            self.trial_steps[trial.trial_id] = (
                label,
                int(result["step"]),
                int(result["total_steps"]),
                float(result.get("wall_seconds", 0.0)),
                int(result.get("restored_step", 0)),
            )
        self._tick()

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self.running.discard(trial.trial_id)
        self.trial_steps.pop(trial.trial_id, None)
        self.occupancy.append((time.monotonic(), len(self.running)))
        result = trial.last_result or {}
        search = self.scheduler.searcher.search_for(trial.trial_id)
        if search is not None and trial.trial_id in search.pruned:
            self.pruned += 1
        elif result.get("finished"):
            self.done += 1
            value = float(result.get(METRIC, -math.inf))
            label = f"{trial.config.get('task_key')} #{trial.config.get('optuna_number')}"
            if self.best is None or value > self.best[0]:
                self.best = (value, f"{label} success {result.get('success_rate', 0):.2f}")
        else:
            self.failed += 1
        if "wall_seconds" in result:
            self.trial_wall.append(float(result["wall_seconds"]))
            # this process's training only: wall_seconds does not cover the restored part
            self.trial_train.append(
                float(result.get("train_seconds", 0.0))
                - float(result.get("restored_train_seconds", 0.0))
            )
        self._tick(force=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.trial_steps.pop(trial.trial_id, None)
        self.occupancy.append((time.monotonic(), len(self.running)))
        self.failed += 1
        self._tick(force=True)

    def idle_after_last_start(self, slots: int) -> float:
        """Slot-seconds left idle between the last trial's start and the last trial's end.

        Once the last trial has started, the budget has nothing more to run: a slot that
        frees up then stays idle, whatever the scheduler's overhead (the "tail").
        """
        if self.last_start is None or slots <= 0:
            return 0.0
        idle = 0.0
        tail = self.occupancy[self.last_start :]
        for (t0, running), (t1, _) in zip(tail, tail[1:], strict=False):
            idle += max(0, slots - running) * (t1 - t0)
        return idle

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._tick()

    def _tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.every:
            return
        self.last_print = now
        self.heartbeat()
        self.echo(self.line(now - self.started))
        for trial_id in sorted(self.trial_steps):
            if trial_id in self.running:
                self.echo("  " + trial_progress(*self.trial_steps[trial_id]))

    def line(self, elapsed: float) -> str:
        """``done X of N`` (finished trials: complete + pruned), the rest, an ETA, the best."""
        best = "-" if self.best is None else f"{self.best[0]:.3f} ({self.best[1]})"
        finished = self.done + self.pruned
        of = "" if self.total is None else f" of {self.total}"
        return (
            f"[{elapsed:6.0f}s] done {finished}{of} (pruned {self.pruned}, failed "
            f"{self.failed}) | running {len(self.running)} | ETA {self.eta(elapsed)} | "
            f"best {best}"
        )

    def eta(self, elapsed: float) -> str:
        """Time left at the pace so far (finished trials per second), capped by a time limit."""
        left: float | None = None
        finished = self.done + self.pruned
        if self.total is not None and finished > 0:
            left = elapsed / finished * max(0, self.total - finished)
        if self.time_left is not None:
            limit = max(0.0, self.time_left - elapsed)
            left = limit if left is None else min(left, limit)
        return "-" if left is None else _duration(left)


def trial_progress(label: str, step: int, total: int, wall: float, restored: int) -> str:
    """``static-mul #3: 120,000/3,000,000 steps (4%), ETA 2h05m``: the ETA extrapolates the
    steps this run trained (since it started or restored) at the pace they took; a trial that
    solves every seed ends before it."""
    done = step - restored
    eta = "?"
    if done > 0 and wall > 0:
        eta = _duration((total - step) * wall / done)
    share = 100.0 * step / total if total else 0.0
    return f"{label}: {step:,}/{total:,} steps ({share:.0f}%), ETA {eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _ray(address: str | None) -> Iterator[float]:
    """Ray for one launch; yields the seconds its start took (0 when already connected).

    A local instance (no address) cannot be bound to loopback: Ray replaces 127.0.0.1 by the
    host's address and listens on every interface. So it starts with token authentication
    on, with a fresh random token that only this driver and its workers (who inherit the
    environment) know; nothing else on the network can join it or submit work.
    """
    import ray

    started = False
    start = time.perf_counter()
    saved = {k: os.environ.get(k) for k in _RAY_AUTH_ENV}
    if not ray.is_initialized():
        if address is None and not os.environ.get("RAY_AUTH_MODE"):
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            _reload_ray_auth()
        # no address: a fresh local instance ("local"), never whichever cluster `ray start` last
        # left on this machine; it picks free ports itself, never the Redis-default 6379
        try:
            ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as err:  # ConnectionError, RuntimeError: Ray's own, with a traceback
            _restore_env(saved)
            where = "ray_address" if address else "ray"
            raise StudyError(f"cannot start or reach Ray: {err}", field=where) from err
        started = True
    try:
        yield time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
            _restore_env(saved)


_RAY_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


def _restore_env(saved: Mapping[str, str | None]) -> None:
    changed = any(os.environ.get(k) != v for k, v in saved.items())
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if changed:
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Makes this process's Ray read RAY_AUTH_MODE/RAY_AUTH_TOKEN again.

    Ray reads them once, when it is imported; the driver would then present no token to the
    instance it starts. (What Ray's own tests do: ``authentication_test_utils``.)
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _node_capacities() -> list[dict[str, float]]:
    """What each alive node of the connected Ray cluster offers (CPU, GPU, custom)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [dict(n["Resources"]) for n in nodes if n.get("Alive")]


def _study_tracker(settings: Settings, spec: StudySpec, study_dir: Path) -> Any:
    from study import _tracking

    # A store the driver opens itself (SQLite, a database, file:) keeps artifacts in the
    # workdir's artifacts/<study>/; a server (http://) keeps them where it is configured to,
    # so they travel through it, not to this node's disk.
    local = not settings.tracking_uri.startswith(("http://", "https://"))
    return _tracking.StudyTracker(
        settings.tracking_uri,
        study_name=spec.name,
        artifact_root=settings.artifact_root if local else None,
    )


def launch(
    spec: StudySpec,
    settings: Settings,
    *,
    resume: bool = False,
    num_samples: int | None = None,
    echo: Echo = print,
    track: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> LaunchResult:
    """Runs (or, with ``resume``, continues) ``spec`` until its budget is used.

    ``num_samples`` overrides ``budget.num_samples`` (per task × op). ``extra_config`` is
    merged into every trial's config (``fail_at_step`` for fault-injection tests).
    """
    study_dir = settings.study_dir(spec.name)
    # Bad settings, unreachable stores and requests no node can schedule stop the launch here,
    # before anything is written
    check_stores(settings)
    with contextlib.ExitStack() as ray_stack:
        ray_seconds = None
        if settings.ray_address is not None:
            ray_seconds = ray_stack.enter_context(_ray(settings.ray_address))
            check_schedulable(spec, _node_capacities())
        else:
            check_schedulable(spec, [local_capacity()])
        lock = _DriverLock(study_dir, spec.name)
        with lock:
            record = _open_record(
                spec, settings, study_dir, resume=resume, num_samples=num_samples
            )
            return _drive(
                spec,
                settings,
                record,
                ray_stack,
                ray_seconds,
                resume=resume,
                echo=echo,
                track=track,
                extra_config=extra_config or {},
            )


def _drive(
    spec: StudySpec,
    settings: Settings,
    record: dict[str, Any],
    ray_stack: contextlib.ExitStack,
    ray_seconds: float | None,
    *,
    resume: bool,
    echo: Echo,
    track: bool,
    extra_config: Mapping[str, Any],
) -> LaunchResult:
    study_dir = settings.study_dir(spec.name)
    budget = record["budget"]
    keys = spec.task_keys()
    time_left = None
    if budget["time_limit"] is not None:
        time_left = float(budget["time_limit"]) - float(record.get("elapsed_s", 0.0))
    tracker = _study_tracker(settings, spec, study_dir) if track else None
    ran = 0
    stats: dict[str, float] = {}
    status = "finished"
    counted = True
    with contextlib.ExitStack() as stack:
        # The stores are set up on a thread: Optuna's (~1 s for a new SQLite file), then, when
        # there is something to run, MLflow's (schema, experiment, parent run: ~2 s). A new
        # study has its whole budget ahead, so Ray starts meanwhile on this thread; ray.init
        # stays on the main thread, since the processes it starts die with the thread that
        # started them.
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="launch-setup"))
        opening = pool.submit(_open_storage, settings, spec, budget, resume=resume, echo=echo)
        preparing = pool.submit(
            _prepare_tracking, opening, tracker, settings, spec, resume=resume, time_left=time_left
        )
        started = time.monotonic()
        beat = _Heartbeat(study_dir, record)
        storage = None
        try:
            if ray_seconds is None and not resume and _may_run(budget, time_left):
                ray_seconds = ray_stack.enter_context(_ray(settings.ray_address))
            storage, left = opening.result()
            beat()
            tracking = preparing.result()
            if _has_work(left, time_left):
                if ray_seconds is None:
                    ray_seconds = ray_stack.enter_context(_ray(settings.ray_address))
                ran, stats = _run_tuner(
                    spec,
                    settings,
                    storage=storage,
                    quotas=left,
                    time_left=time_left,
                    study_dir=study_dir,
                    tracking=tracking,
                    echo=echo,
                    heartbeat=beat,
                    extra_config=extra_config,
                )
                stats["ray_start_seconds"] = ray_seconds
            else:
                # nothing ran: this call is no launch (the record keeps its launches)
                counted = False
                echo("nothing to run: the budget is already used")
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            # Trials stop first (their workers end with the driver's Ray session), so that
            # none of them writes to MLflow after the states below are settled
            ray_stack.close()
            if storage is None and opening.exception() is None:
                storage = opening.result()[0]  # Ray's start failed while the stores opened
            if storage is not None:
                preparing.exception()  # waits: a parent run started meanwhile is ended here
                _fail_running(storage, spec.name, keys)
                if tracker is not None and tracker.parent_run_id is not None:
                    tracker.end_launch(
                        {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
                    )
                    # trial runs whose process died without a word (a lost node) end KILLED
                    tracker.reconcile()
                    # MLflow says what Optuna says: state tags, run status, cross-links
                    _agree(tracker, storage, spec)
                final = _final_status(status, storage, spec, budget, record)
            else:
                final = "failed"  # the stores did not open: nothing ran, and nothing runs
            if counted:
                beat(status=final)
            else:
                record["launches"].pop()
                beat(status=final, count=False)
    if status == "interrupted" or final == "incomplete":
        echo(f"resume with: nalu-study resume {spec.name}")
    wall = time.monotonic() - started
    return LaunchResult(
        name=spec.name,
        study_dir=study_dir,
        tasks=summarize(storage, spec.name, keys),
        wall_seconds=wall,
        trials_run=ran,
        stats=stats,
        experiment_id=None if tracker is None else tracker.experiment_id,
    )


def _agree(tracker: Any, storage: optuna.storages.BaseStorage, spec: StudySpec) -> None:
    """Sets each trial run's ``nalu.state`` (and status) to its Optuna trial's final state.

    (Each Optuna trial got its ``mlflow_run_id`` user attribute from its first result, while
    it could still be written: see ``TaskSearch.on_trial_result``.)
    """
    states: dict[tuple[str, int], str] = {}
    for key in spec.task_keys():
        name = optuna_study_name(spec.name, key)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished():
                states[(name, trial.number)] = trial.state.name
    tracker.agree(states)


def _may_run(budget: Mapping[str, Any], time_left: float | None) -> bool:
    """Before the storage is read: whether the budget can leave anything to run."""
    return budget["num_samples"] != 0 and (time_left is None or time_left > 0)


def _has_work(left: Mapping[str, int], time_left: float | None) -> bool:
    """Trials left to run (per task × op quotas) and time to run them in."""
    return sum(left.values()) > 0 and (time_left is None or time_left > 0)


def _open_storage(
    settings: Settings, spec: StudySpec, budget: Mapping[str, Any], *, resume: bool, echo: Echo
) -> tuple[optuna.storages.RDBStorage, dict[str, int]]:
    """Optuna's storage and the trials left per task × op (after a resume's reconciling)."""
    import sqlalchemy.exc

    try:
        storage = open_storage(settings.storage)
    except sqlalchemy.exc.SQLAlchemyError as err:
        # reachable (checked before the launch) but unusable: no right to create the tables,
        # a schema of another Optuna version, ...
        detail = " ".join(str(getattr(err, "orig", err)).split())
        raise StudyError(
            f"cannot open the Optuna storage {redact(settings.storage)}: {detail}", field="storage"
        ) from None
    if resume:
        fixed = reconcile_storage(storage, spec.name, spec.task_keys())
        echo(
            f"resume: {fixed['failed_running']} interrupted trial(s) marked FAIL, "
            f"{fixed['requeued']} re-enqueued"
        )
    return storage, quotas(storage, spec, num_samples=budget["num_samples"])


def _prepare_tracking(
    opening: Future[tuple[optuna.storages.RDBStorage, dict[str, int]]],
    tracker: Any,
    settings: Settings,
    spec: StudySpec,
    *,
    resume: bool,
    time_left: float | None,
) -> dict[str, Any] | None:
    """The MLflow experiment and this launch's parent run, when there is something to run."""
    if tracker is None or opening.exception() is not None:
        return None
    _, left = opening.result()
    if not _has_work(left, time_left):
        return None
    experiment_id = tracker.prepare()
    if resume:
        tracker.reconcile()
    parent = tracker.start_launch(
        params=launch_params(spec, resume=resume),
        spec_yaml=yaml.safe_dump(spec_document(spec), sort_keys=False),
    )
    return {
        "uri": settings.tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent,
        "study": spec.name,
    }


def launch_params(spec: StudySpec, *, resume: bool) -> dict[str, object]:
    """The parent run's params: what a reader of the runs list needs to compare launches."""
    return {
        "study": spec.name,
        "resume": resume,
        "space": spec.space,
        "tasks": ",".join(spec.task_keys()),
        "sampler": spec.sampler.name,
        "sampler.seed": spec.sampler.seed,
        "sampler.options": dict(spec.sampler.options),
        "pruner": spec.pruner.name,
        "pruner.options": dict(spec.pruner.options),
        "objective": spec.objective.metric,
        "objective.tie_break": spec.objective.tie_break,
        "seeds": spec.training.seeds,
        "steps": spec.training.steps,
        "num_samples": spec.budget.num_samples,
        "time_limit": spec.budget.time_limit,
    }


def _final_status(
    status: str,
    storage: optuna.storages.BaseStorage,
    spec: StudySpec,
    budget: Mapping[str, Any],
    record: Mapping[str, Any],
) -> str:
    if status != "finished":
        return status
    left = sum(quotas(storage, spec, num_samples=budget["num_samples"]).values())
    limit = budget["time_limit"]
    if budget["num_samples"] is not None and left == 0:
        return "finished"
    if limit is not None and float(record.get("elapsed_s", 0.0)) >= float(limit):
        return "finished"
    return "incomplete"  # failed trials left budget over: `resume` runs them again


class _Heartbeat:
    """Keeps ``study.json`` current: elapsed seconds (for the time budget) and the status."""

    def __init__(self, study_dir: Path, record: dict[str, Any]) -> None:
        self.study_dir = study_dir
        self.record = record
        self.last = time.time()

    def __call__(self, *, status: str | None = None, count: bool = True) -> None:
        now = time.time()
        if count:
            self.record["elapsed_s"] = float(self.record.get("elapsed_s", 0.0)) + (now - self.last)
        self.last = now
        self.record["heartbeat"] = now
        if status is not None:
            self.record["status"] = status
        if status is not None and count:
            self.record["launches"][-1]["ended"] = _now()
            self.record["launches"][-1]["status"] = status
        write_record(self.study_dir, self.record)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _DriverLock:
    """One driver per study at a time: an exclusive lock on ``<study>/.driver.lock``.

    Two ``launch`` (or ``resume``) calls of one name at once would both find no running
    driver and both write the study; the second to ask for the lock is refused instead. The
    kernel drops the lock when the driver dies, even by SIGKILL.
    """

    def __init__(self, study_dir: Path, name: str) -> None:
        self.path = study_dir / ".driver.lock"
        self.name = name
        self.fd: int | None = None

    def __enter__(self) -> _DriverLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyError(
                f"study {self.name!r} is being launched or resumed by another driver right now",
                field="name",
            ) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _open_record(
    spec: StudySpec,
    settings: Settings,
    study_dir: Path,
    *,
    resume: bool,
    num_samples: int | None,
) -> dict[str, Any]:
    exists = (study_dir / "study.json").exists()
    if exists and not resume:
        raise StudyError(
            f"study {spec.name!r} already exists in {study_dir}; "
            f"use `nalu-study resume {spec.name}` or another --name",
            field="name",
        )
    if resume:
        record = read_record(study_dir)
        if driver_alive(record) and record.get("status") == "running":
            raise StudyError(
                f"study {spec.name!r} is still running (driver pid {record['driver_pid']})",
                field="name",
            )
    else:
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / SPEC).write_text(yaml.safe_dump(spec_document(spec), sort_keys=False))
        record = {
            "name": spec.name,
            "created": _now(),
            "tasks": spec.task_keys(),
            "elapsed_s": 0.0,
            "launches": [],
            "budget": {
                "num_samples": spec.budget.num_samples,
                "time_limit": spec.budget.time_limit,
            },
        }
    if num_samples is not None:
        record["budget"]["num_samples"] = num_samples
    record["settings"] = {
        "ray_address": settings.ray_address,
        "tracking_uri": settings.tracking_uri,
        "storage": settings.storage,
        "workdir": str(settings.workdir),
    }
    record.update(status="running", driver_pid=os.getpid(), driver_host=platform.node())
    argv = [redact(a) for a in sys.argv[1:]]
    record["launches"].append({"started": _now(), "resume": resume, "argv": argv})
    write_record(study_dir, record)
    return record


def spec_document(spec: StudySpec) -> dict[str, Any]:
    """The spec as launched (space path resolved), which ``resume`` reloads."""
    data = dict(spec.raw)
    data["space"] = spec.space
    data["name"] = spec.name
    return data


def _run_tuner(
    spec: StudySpec,
    settings: Settings,
    *,
    storage: optuna.storages.BaseStorage,
    quotas: Mapping[str, int],
    time_left: float | None,
    study_dir: Path,
    tracking: Mapping[str, Any] | None,
    echo: Echo,
    heartbeat: Callable[[], None],
    extra_config: Mapping[str, Any],
) -> tuple[int, dict[str, float]]:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    space = load_space(spec.space)
    constants = {
        "objective": {"metric": spec.objective.metric, "tie_break": spec.objective.tie_break},
        "checkpoint_every": spec.training.checkpoint_every,
        "threads": max(1, int(spec.resources.cpus)),
        "ranges": list(spec.training.ranges),
        "tracking": dict(tracking) if tracking else None,
        **extra_config,
    }
    searches = {}
    for i, task in enumerate(spec.tasks):
        key = task_key(task)
        define = _Define(
            space=space,
            task=task,
            train=spec.training.train_overrides(),
            checkpoint_root=study_dir / "ray" / "checkpoints",
            constants=constants,
        )
        searches[key] = TaskSearch(
            define,
            study_name=optuna_study_name(spec.name, key),
            storage=storage,
            sampler=spec.sampler.build(offset=i, done=_trial_count(storage, spec.name, key)),
            pruner=spec.pruner.build(max_resource=spec.training.steps),
        )
        study = searches[key].study
        if spec.sampler.enqueue and not study.get_trials(deepcopy=False):
            for point in spec.sampler.enqueue:  # a new study tries these first
                study.enqueue_trial(dict(point), user_attrs={"enqueued": True})
        _annotate(searches[key], spec, tracking)
    searcher = TaskGridSearcher(searches, quotas)
    scheduler = OptunaPruningScheduler(searcher)
    total = searcher.total
    unlimited = spec.budget.num_samples is None
    progress = _Progress(
        echo=echo,
        scheduler=scheduler,
        heartbeat=heartbeat,
        total=None if unlimited else total,
        time_left=time_left,
    )
    echo(
        f"study {spec.name}: {len(searches)} task(s), "
        f"{'unlimited' if unlimited else total} trial(s) to run"
        + ("" if time_left is None else f", {time_left:.0f}s left")
    )
    trainable = tune.with_resources(NaluTrainable, spec.resources.as_tune())
    results = [CSVLoggerCallback(), JsonLoggerCallback()]  # type: ignore[no-untyped-call]
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1 if unlimited else total,
            max_concurrent_trials=spec.budget.max_concurrent,
            time_budget_s=time_left,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"launch-{datetime.now(UTC):%Y%m%d-%H%M%S}",
            storage_path=str(study_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=spec.training.max_failures),
            verbose=0,
            # Tune's CSV and JSON results stay; its TensorBoard logger (and the
            # "run tensorboard" hint it prints, for a tool we do not install) goes
            callbacks=[progress, *results],
        ),
    )
    wall_start = time.perf_counter()
    # Ctrl-C raises KeyboardInterrupt here instead of Tune's graceful stop, which would end
    # the running trials' MLflow runs as PRUNED while Optuna fails them, and print a
    # Tuner.restore hint (the study resumes with `nalu-study resume`, see launch())
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _quiet_restore_hint()
    with _working_folder(study_dir):
        tuner.fit()
    wall = time.perf_counter() - wall_start
    ran = progress.done + progress.pruned + progress.failed
    slots = int(spec.budget.max_concurrent or 0)
    stats = {
        "study_wall_seconds": wall,
        "trials": float(ran),
        "trial_wall_seconds": sum(progress.trial_wall),
        "trial_train_seconds": sum(progress.trial_train),
        "slots": float(slots),
        "idle_after_last_start_seconds": progress.idle_after_last_start(slots),
    }
    return ran, stats


@contextlib.contextmanager
def _working_folder(folder: Path) -> Iterator[None]:
    """Runs Tune from ``folder``, and comes back if the old folder still exists.

    Tune resolves its results folder against the working directory when the run ends. A
    driver submitted as a Ray job (the compose ``launch`` service) works in the job's
    unpacked ``working_dir``, which Ray's runtime-env agent may delete once no trial uses it
    any more: the run then ended in FileNotFoundError from ``os.getcwd()``.
    """
    try:
        previous: str | None = os.getcwd()
    except FileNotFoundError:
        previous = None
    os.chdir(folder)
    try:
        yield
    finally:
        if previous is not None and os.path.isdir(previous):
            os.chdir(previous)


class _NoRestoreHint(logging.Filter):
    """Drops Ray Tune's "Resume ... with Tuner.restore(...)" advice: ours is `resume NAME`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _quiet_restore_hint() -> None:
    for name in ("ray.tune.tune", "ray.tune.tuner", "ray.tune.impl.tuner_internal"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRestoreHint) for f in logger.filters):
            logger.addFilter(_NoRestoreHint())


def _annotate(search: TaskSearch, spec: StudySpec, tracking: Mapping[str, Any] | None) -> None:
    """Optuna's own metadata: the objective's name, the spec, and where MLflow has the study.

    optuna-dashboard shows the metric name on its axes and the user attributes on the study
    page; ``mlflow_experiment_id`` leads from an Optuna study to its MLflow experiment.
    """
    study = search.study
    study.set_metric_names([spec.objective.metric])
    study.set_user_attr("spec", _jsonable_spec(spec))
    study.set_user_attr("nalu_study", spec.name)
    if tracking:
        study.set_user_attr("mlflow_experiment_id", str(tracking["experiment_id"]))


def _jsonable_spec(spec: StudySpec) -> Any:

    return json.loads(json.dumps(spec_document(spec), default=str))


def _trial_name(trial: Any) -> str:
    number = trial.config.get("optuna_number", trial.trial_id)
    return f"{trial.config.get('task_key', 'trial')}-{number}"
