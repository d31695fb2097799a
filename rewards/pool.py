"""A small pool of long-lived reward worker processes that no plugin can take down.

Why not ``concurrent.futures.ProcessPoolExecutor``: one dead worker breaks the
whole executor, and it cannot kill one hung call. Why not Ray tasks: a task's
start-up and cold imports cost ~100x a cheap reward (``bench/reward_scoring.py``).
So: stdlib ``multiprocessing`` processes from a *forkserver* that has already
imported ``rewards`` (and ``math_verify``), each with its own ``Pipe``;
``multiprocessing.connection.wait`` watches every busy worker's pipe and
process sentinel at once.

The parent alone decides what a call cost:

- a worker reports each call as it ends (``rewards/workers.py``), so when it dies
  the call it was running is known: that call is ``crashed``, the job's other
  calls go back to the queue;
- a call still running ``timeout_s + grace_s`` after it started ignored its
  ``SIGALRM`` (swallowed it, or is stuck in C): the worker is killed, the call is
  ``timeout``, the rest go back to the queue;
- an async job runs its calls concurrently, so a death there cannot name the
  culprit: its unfinished calls are retried one per job (``solo``), where a death
  is that call's own;
- a dead or killed worker is replaced at once (a fork of the warm forkserver).

A worker that dies before it could even start is the pool's failure, not a
call's: after a few in a row the batch raises rather than charging every sample.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait

from .workers import Job, Outcome, failure, serve

log = logging.getLogger(__name__)
PRELOAD = ["rewards", "math_verify"]  # imported once in the forkserver; every worker starts warm
START_TIMEOUT_S = 120.0  # a worker's start, or its first import of a plugin: neither is a call's time
MAX_START_FAILURES = 3

OnOutcome = Callable[[int, int, Outcome], None]  # (reward index, sample index, outcome)


def default_size() -> int:
    """``POSTTRAIN_REWARD_WORKERS``, else one per core up to 4 (rewards share the node with the engine)."""
    return max(1, int(os.environ.get("POSTTRAIN_REWARD_WORKERS", 0)) or min(4, os.cpu_count() or 1))


@dataclass
class _Running:
    job: Job
    pending: list[int]  # sample indices not reported yet, in call order
    deadline: float  # when the parent kills the worker


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object  # the parent's end of the worker's Pipe
    ready: bool = False
    running: _Running | None = None
    loaded: set[bytes] = field(default_factory=set)  # functions this worker has imported (its cache)


class WorkerPool:
    def __init__(self, size: int | None = None):
        self.size = size or default_size()
        self._context = _context()
        self._lock = threading.Lock()  # one batch at a time: the workers are shared
        self._workers = [self._spawn() for _ in range(self.size)]
        self._start_failures = 0

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def run(self, jobs: list[Job], grace_s: float, on_outcome: OnOutcome) -> None:
        """Run every job; ``on_outcome`` is called exactly once per call, whatever the plugin does."""
        with self._lock:
            queue = deque(jobs)
            try:
                while queue or any(worker.running for worker in self._workers):
                    self._dispatch(queue, grace_s)
                    busy = [worker for worker in self._workers if worker.running]
                    deadline = min(worker.running.deadline for worker in busy)
                    handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                    wait(handles, timeout=max(0.0, deadline - time.monotonic()))
                    for worker in busy:
                        self._check(worker, queue, grace_s, on_outcome)
            except BaseException:
                self._reset_busy()
                raise

    def close(self) -> None:
        for worker in self._workers:
            _stop(worker)

    def _spawn(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=serve, args=(child_end,), name="reward-worker", daemon=True)
        process.start()
        child_end.close()  # so that the worker's death shows up as EOF on our end
        return _Worker(process, parent_end)

    def _dispatch(self, queue: deque, grace_s: float) -> None:
        for index, worker in enumerate(self._workers):
            if not queue:
                return
            if worker.running:
                continue
            if not worker.process.is_alive():  # died between batches (e.g. the OOM killer)
                _stop(worker)
                worker = self._workers[index] = self._spawn()
            job = queue.popleft()
            now = time.monotonic()
            warm = worker.ready and job.function in worker.loaded
            limit = job.timeout_s + grace_s if warm else START_TIMEOUT_S
            worker.running = _Running(job, [call[0] for call in job.calls], now + limit)
            try:
                worker.conn.send(job)
            except OSError:
                pass  # it died just now: _check finds it dead and deals with the job

    def _check(self, worker: _Worker, queue: deque, grace_s: float, on_outcome: OnOutcome) -> None:
        """Take the worker's reports; then deal with its death or its overrun."""
        alive = self._drain(worker, grace_s, on_outcome)
        if not worker.running:
            return
        if not alive or not worker.process.is_alive():
            worker.process.join(timeout=1.0)
            detail = f"the worker process died ({_exit_reason(worker.process)})"
            self._lost(worker, queue, on_outcome, "crashed", detail)
        elif time.monotonic() > worker.running.deadline:
            what = f"still running {worker.running.job.timeout_s + grace_s:.1f}s after it started (ignored its timeout)"
            if not worker.ready or worker.running.job.function not in worker.loaded:
                what = f"the worker did not start, or import the reward, within {START_TIMEOUT_S:.0f}s"
            self._lost(worker, queue, on_outcome, "timeout", f"{what}; worker killed")

    def _drain(self, worker: _Worker, grace_s: float, on_outcome: OnOutcome) -> bool:
        """Read every report waiting on the worker's pipe; False once the pipe is closed."""
        try:
            while worker.running and worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "ready":
                    worker.ready, self._start_failures = True, 0
                    continue
                if message[0] == "loaded":  # the plugin is imported: its first call starts now
                    worker.loaded.add(worker.running.job.function)
                    self._restart_clock(worker, grace_s)
                    continue
                running, index = worker.running, message[1]
                on_outcome(running.job.reward_index, index, message[2])
                running.pending.remove(index)
                if not running.pending:
                    worker.running = None
                elif not running.job.is_async:  # the next call starts now: its own timeout
                    self._restart_clock(worker, grace_s)
        except Exception:  # noqa: BLE001 - EOF, or a pipe a plugin wrote garbage into: the worker is lost
            return False
        return True

    def _restart_clock(self, worker: _Worker, grace_s: float) -> None:
        if worker.running:
            worker.running.deadline = time.monotonic() + worker.running.job.timeout_s + grace_s

    def _lost(self, worker: _Worker, queue: deque, on_outcome: OnOutcome, reason: str, detail: str) -> None:
        """The worker died or was killed mid-job: charge the call it was running, requeue the rest."""
        running, slot = worker.running, self._workers.index(worker)
        _stop(worker)
        self._workers[slot] = self._spawn()
        if not worker.ready:  # it never ran a call: not the plugin's doing
            self._start_failures += 1
            if self._start_failures > MAX_START_FAILURES:
                raise RuntimeError(f"reward workers cannot start: {detail}")
            queue.appendleft(running.job)
            return
        job = running.job
        rest = [call for call in job.calls if call[0] in running.pending]
        if job.is_async and not job.solo and len(rest) > 1:  # which of the concurrent calls? ask each alone
            queue.extendleft(replace(job, calls=[call], solo=True) for call in reversed(rest))
            return
        culprits = rest if job.is_async else rest[:1]  # sync: calls run in order, the first unreported one
        for call in culprits:
            on_outcome(job.reward_index, call[0], failure(reason, detail))
        if not job.is_async and len(rest) > 1:
            queue.appendleft(replace(job, calls=rest[1:]))

    def _reset_busy(self) -> None:
        """After an error (or Ctrl-C) in the parent mid-batch: no worker may carry a stale job into the next batch.

        Busy workers are stopped, not replaced: ``_dispatch`` replaces dead ones when
        work comes, and spawning here could mask the error being raised.
        """
        for worker in self._workers:
            if worker.running:
                worker.running = None
                _stop(worker)


def _stop(worker: _Worker) -> None:
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(timeout=5.0)
    worker.conn.close()


def _exit_reason(process: multiprocessing.Process) -> str:
    code = process.exitcode
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _context():
    """A forkserver that has imported ``PRELOAD``: a new worker is a fork of a warm, single-threaded process.

    (Forking the caller itself is unsafe once it runs threads -- Ray's, torch's.)
    Where there is no forkserver, spawn: slower to start, same behaviour.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide pool, started on first use and stopped at exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            atexit.register(_POOL.close)
        return _POOL


def warm_pool() -> threading.Thread:
    """Start the shared pool on a background thread (its forkserver's imports take seconds on a
    small machine), so that a run's first reward batch does not wait for them; returns the thread."""
    thread = threading.Thread(target=shared_pool, name="reward-pool-warmup", daemon=True)
    thread.start()
    return thread

