"""Buffered delivery to MLflow: one background thread per run, retries, bounded buffer.

Generic over what a run holds: the caller (:mod:`study._tracking`, which knows the study and
trial layout) opens the run and queues params, tags, metrics, artifacts and a final status.
:meth:`_Delivery.put` never touches the network; the thread sends ``log_batch`` calls (up to
1000 metrics each), retries with exponential backoff while the server is unreachable, and, if
the buffer overflows, drops the oldest metrics with a warning and counts them in ``dropped``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

# MLflow's per-call limits for log_batch.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
# Errors that will not heal by retrying: the request itself is wrong.
_PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "BAD_REQUEST",
    }
)


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        # We retry with our own backoff in the background; MLflow's own retries (7, factor 2)
        # would block one call for minutes while the server is down. A user's value wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return MlflowClient(tracking_uri=tracking_uri)


def _is_permanent(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _PERMANENT_CODES


class _Point(NamedTuple):
    """One metric value; the trial's thread builds these, never MLflow objects."""

    key: str
    value: float
    timestamp: int
    step: int


def _points(metrics: Mapping[str, float], step: int) -> list[_Point]:
    now = int(time.time() * 1000)
    return [_Point(str(k), float(v), now, int(step)) for k, v in metrics.items()]


@dataclass
class _Pending:
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: deque[Any] = field(default_factory=deque)
    artifacts: list[Path] = field(default_factory=list)
    status: RunStatus | None = None


class _Delivery:
    """Background delivery of one run's params, tags, metrics and artifacts, with retries."""

    def __init__(
        self,
        tracking_uri: str,
        open_run: Any,
        *,
        max_buffered: int,
        backoff: tuple[float, float],
        min_interval: float,
        warm_up: Callable[[], None],
    ) -> None:
        self._tracking_uri = tracking_uri
        self._client: MlflowClient | None = None  # made on this thread: importing mlflow is slow
        self._min_interval = min_interval
        self._warm_up = warm_up  # once the run is open, off the trial's thread
        # (client) -> (run_id, last evaluated step of a continued run or -1); runs here
        self._open_run = open_run
        self._max_buffered = max_buffered
        self._backoff_min, self._backoff_max = backoff
        self._pending = _Pending()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._woken_by_close = False
        self.run_id: str | None = None
        self._done_step = -1  # a continued run's last evaluated step
        self.opened = threading.Event()
        self.dropped = 0
        self.failures = 0
        self.failures_in_a_row = 0
        self.seconds = 0.0  # CPU time of the delivery thread (it competes with training)
        self._thread = threading.Thread(target=self._loop, name="nalu-tracking", daemon=True)
        self._thread.start()

    # called from the trial thread: never touches the network
    def put(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Iterable[Any] = (),
        evaluation: bool = False,
        artifacts: Path | None = None,
        status: RunStatus | None = None,
    ) -> None:
        with self._wake:
            self._pending.params.update(params or {})
            self._pending.tags.update(tags or {})
            # evaluation metrics are dropped when a continued run already holds their step
            self._pending.metrics.extend(
                (evaluation, m) for m in metrics if not (evaluation and m.step <= self._done_step)
            )
            overflow = len(self._pending.metrics) - self._max_buffered
            if overflow > 0:
                for _ in range(overflow):
                    self._pending.metrics.popleft()
                self.dropped += overflow
                warnings.warn(
                    f"tracking buffer full ({self._max_buffered} metrics, server unreachable "
                    f"for long): dropped the {overflow} oldest; {self.dropped} dropped so far",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if artifacts is not None:
                self._pending.artifacts.append(artifacts)
            if status is not None:
                self._pending.status = status
            self._wake.notify()

    def pending_count(self) -> int:
        with self._lock:
            p = self._pending
            return len(p.params) + len(p.tags) + len(p.metrics) + len(p.artifacts)

    def close(self, timeout: float) -> bool:
        """Stops accepting work and waits up to ``timeout`` s; True when all was delivered."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _empty(self) -> bool:
        p = self._pending
        return not (p.params or p.tags or p.metrics or p.artifacts or p.status)

    def _loop(self) -> None:
        delay = self._backoff_min
        while True:
            with self._wake:
                while self._empty() and not self._closed and self.run_id is not None:
                    self._wake.wait()
                if self._empty() and self._closed and self.run_id is not None:
                    return
            start = time.thread_time()
            try:
                self._deliver_some()
                self.seconds += time.thread_time() - start
                if self.failures_in_a_row:
                    log.warning(
                        "tracking: delivering again after %d failed tries", self.failures_in_a_row
                    )
                self.failures_in_a_row = 0
                delay = self._backoff_min
                self._gather()
            except Exception as err:
                self.seconds += time.thread_time() - start
                self.failures += 1
                self.failures_in_a_row += 1
                # One warning per outage, not one per retry.
                level = logging.WARNING if self.failures_in_a_row == 1 else logging.DEBUG
                log.log(level, "tracking delivery failed (%s); retrying with backoff", err)
                self._back_off(delay)
                delay = min(delay * 2, self._backoff_max)

    def _back_off(self, seconds: float) -> None:
        # New work does not cut the wait short (that would retry on every evaluation), but
        # close() does, once: the final flush starts with a fresh try.
        deadline = time.monotonic() + seconds
        with self._wake:
            while (left := deadline - time.monotonic()) > 0:
                if self._closed and not self._woken_by_close:
                    self._woken_by_close = True
                    return
                self._wake.wait(left)

    def _gather(self) -> None:
        # Let evaluations gather for min_interval: one transaction for several is far cheaper
        # than one each. A full batch or close() ends the wait at once.
        deadline = time.monotonic() + self._min_interval
        with self._wake:
            while not self._closed and len(self._pending.metrics) < _MAX_METRICS:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._wake.wait(left)

    def _deliver_some(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self._client is None:
            self._client = _client(self._tracking_uri)
        if self.run_id is None:
            run_id, done_step = self._open_run(self._client)
            with self._lock:
                kept = [
                    (e, m) for e, m in self._pending.metrics if not (e and m.step <= done_step)
                ]
                self._pending.metrics = deque(kept)
                self._done_step = done_step
                self.run_id = run_id
            self.opened.set()
            self._warm_up()
            return  # then gather: the params go out with the first evaluations
        run_id = self.run_id
        with self._lock:
            params = dict(list(self._pending.params.items())[:_MAX_PARAMS])
            tags = dict(list(self._pending.tags.items())[:_MAX_TAGS])
            metrics = [
                Metric(*self._pending.metrics[i][1])
                for i in range(min(_MAX_METRICS, len(self._pending.metrics)))
            ]
            dropped_before = self.dropped
        if params or tags or metrics:
            try:
                self._client.log_batch(
                    run_id,
                    metrics=metrics,
                    params=[Param(k, v) for k, v in params.items()],
                    tags=[RunTag(k, v) for k, v in tags.items()],
                    synchronous=True,
                )
            except Exception as err:
                if not _is_permanent(err):
                    raise
                # A changed param on a retried run, say: keep everything else, say so loudly.
                log.warning("tracking: MLflow refused a batch of run %s: %s", run_id, err)
                self._deliver_one_by_one(run_id, params, tags, metrics)
            with self._lock:
                for key in params:
                    if self._pending.params.get(key) == params[key]:
                        del self._pending.params[key]
                for key in tags:
                    if self._pending.tags.get(key) == tags[key]:
                        del self._pending.tags[key]
                # An overflow during the call already dropped some of this batch's oldest.
                delivered = max(0, len(metrics) - (self.dropped - dropped_before))
                for _ in range(min(delivered, len(self._pending.metrics))):
                    self._pending.metrics.popleft()
            return
        with self._lock:
            artifacts = list(self._pending.artifacts)
        for folder in artifacts:
            self._client.log_artifacts(run_id, str(folder))
            with self._lock:
                self._pending.artifacts.remove(folder)
            _remove_tree(folder)
        with self._lock:
            status = self._pending.status
        if status is not None:
            self._client.set_terminated(run_id, status=status)
            with self._lock:
                if self._pending.status == status:
                    self._pending.status = None

    def _deliver_one_by_one(
        self, run_id: str, params: dict[str, str], tags: dict[str, str], metrics: list[Any]
    ) -> None:
        from mlflow.entities import Param, RunTag

        assert self._client is not None

        self._client.log_batch(
            run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        for key, value in params.items():
            try:
                self._client.log_batch(run_id, params=[Param(key, value)])
            except Exception as err:
                if not _is_permanent(err):
                    raise
                warnings.warn(
                    f"tracking: param {key}={value!r} not logged on run {run_id}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
