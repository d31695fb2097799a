"""What runs inside a reward worker process: plugin calls, each turned into an ``Outcome``.

A worker is a long-lived child of the scoring process (``rewards/pool.py``
starts, kills and replaces it). It receives ``Job``s over a pipe, runs each
call and sends one ``(sample_index, Outcome)`` per call *as soon as it ends*, so
the parent always knows which call was running when the worker died or hung.

Here a call can only end in a value or a Python exception (``SystemExit`` and
``KeyboardInterrupt`` included); everything a worker cannot report itself -- a
crash, ``os._exit``, a hang that swallows its ``SIGALRM`` -- is the parent's to
detect. This module must not import anything heavy: it is imported by every
worker, and a worker's cold start is what the pool exists to avoid.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass, field

from .registry import RewardResult

MAX_DETAIL_CHARS = 2000  # per error message kept and logged; a plugin may raise with megabytes


class RewardTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class Outcome:
    """One call's result: a finite score (``reason is None``) or a failure and why."""

    score: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # raised | timeout | exit | interrupt | crashed | non_finite | not_a_number | unloadable
    detail: str = ""


@dataclass(frozen=True)
class Job:
    """Calls of one reward function on some samples, run in one worker."""

    reward_index: int
    function: bytes  # the pickled function: by reference when importable, else by value (cloudpickle)
    is_async: bool
    timeout_s: float
    calls: list[tuple[int, str, str, dict]]  # (sample index, prompt, completion, fields)
    sys_path: list[str]  # the parent's, so user plugins importable there are importable here
    cwd: str
    solo: bool = False  # retried alone after a worker died with several async calls in flight


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [truncated: {len(text):,} chars in all]"


def failure(reason: str, error: BaseException | str) -> Outcome:
    return Outcome(reason=reason, detail=error if isinstance(error, str) else describe(error))


def describe(error: BaseException) -> str:
    """A short traceback; the message is cut before formatting, so a 50 MB one costs nothing."""
    try:
        message = bounded(str(error))
    except BaseException:  # noqa: BLE001 - a plugin's exception may fail even to print
        message = "<str() of the exception failed>"
    frames = "".join(traceback.format_tb(error.__traceback__, limit=-4))
    return f"Traceback (most recent call last):\n{frames}{type(error).__name__}: {message}"


def interpret(result) -> Outcome:
    """A plugin's return value as an ``Outcome``: only finite real numbers are scores."""
    value = result.score if isinstance(result, RewardResult) else result
    components = result.components if isinstance(result, RewardResult) else {}
    numbers = {"score": value, **{f"component {key!r}": v for key, v in components.items()}}
    for what, number in numbers.items():
        if isinstance(number, (str, bytes)) or number is None:  # float("1.0") would accept a string
            return failure("not_a_number", bounded(f"{what} is {number!r}, not a number (returned {result!r})"))
        try:
            number = float(number)
        except (TypeError, ValueError) as error:
            return failure("not_a_number", bounded(f"{what} is {number!r}, not a number ({error})"))
        if not math.isfinite(number):
            return failure("non_finite", f"{what} is {number}: a NaN or inf score would poison its group's advantages")
    return Outcome(float(value), {key: float(v) for key, v in components.items()})


def classify(error: BaseException) -> Outcome:
    if isinstance(error, _Contained):
        error = error.error
    if isinstance(error, RewardTimeout):
        return failure("timeout", error)
    if isinstance(error, SystemExit):
        return failure("exit", error)
    if isinstance(error, KeyboardInterrupt):
        return failure("interrupt", error)
    return failure("raised", error)


def serve(conn) -> None:
    """The worker's main loop: run jobs until the parent closes the pipe."""
    # Ctrl-C in a terminal reaches the whole process group: it is the driver's to handle, and the
    # driver ends us by closing the pipe (or, if it dies, we see EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    functions: dict[bytes, object] = {}  # warm: a plugin's module is imported once per worker
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        _adopt_paths(job)
        fn = functions.get(job.function)
        if fn is None:
            try:
                fn = functions[job.function] = pickle.loads(job.function)
            except BaseException as error:  # noqa: BLE001 - an import may exit or raise anything
                for index, *_ in job.calls:
                    conn.send(("result", index, failure("unloadable", error)))
                continue
        conn.send(("loaded",))  # the parent times calls from here, not from the (maybe slow) import
        if job.is_async:
            _run_async(conn, fn, job)
        else:
            for index, prompt, completion, fields in job.calls:
                conn.send(("result", index, call_sync(fn, prompt, completion, fields, job.timeout_s)))


def _adopt_paths(job: Job) -> None:
    if sys.path != job.sys_path:
        sys.path[:] = job.sys_path
    if os.getcwd() != job.cwd:
        try:
            os.chdir(job.cwd)
        except OSError:
            pass  # the parent's directory is gone; plugins that need it fail on their own


def call_sync(fn, prompt: str, completion: str, fields: dict, timeout_s: float) -> Outcome:
    """Run one call under a ``SIGALRM`` timer (interrupts pure Python and sleeps; C code may ignore it)."""
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])  # an earlier call may have blocked it
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            result = fn(prompt, completion, **fields)
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                result = asyncio.run(_within(result, timeout_s))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return interpret(result)
    except BaseException as error:  # noqa: BLE001 - a plugin may raise anything, exits included
        return classify(error)
    finally:
        signal.signal(signal.SIGALRM, previous)


async def _within(awaitable, timeout_s: float):
    try:
        return await asyncio.wait_for(_await(awaitable), timeout_s)
    except TimeoutError:
        raise RewardTimeout(f"async reward ran past {timeout_s}s") from None


def _run_async(conn, fn, job: Job) -> None:
    """All of the job's calls at once, on one event loop; each result is sent the moment it is known."""
    sent: set[int] = set()

    async def one(index: int, prompt: str, completion: str, fields: dict) -> None:
        try:
            outcome = interpret(await _within(_contained(fn(prompt, completion, **fields)), job.timeout_s))
        except BaseException as error:  # noqa: BLE001
            outcome = classify(error)
        conn.send(("result", index, outcome))
        sent.add(index)

    async def run_all() -> None:
        await asyncio.gather(*(one(*call) for call in job.calls))

    try:
        asyncio.run(run_all())
    except BaseException as error:  # noqa: BLE001 - the loop itself broke: the rest cannot be told apart
        for index, *_ in job.calls:
            if index not in sent:
                conn.send(("result", index, classify(error)))


async def _contained(coroutine):
    """Await a plugin's coroutine, turning exits into ordinary exceptions.

    ``wait_for`` runs it as its own task, and asyncio re-raises ``SystemExit`` and
    ``KeyboardInterrupt`` from a task straight out of the event loop, which would
    end the loop for every call in it.
    """
    try:
        return await coroutine
    except (SystemExit, KeyboardInterrupt) as error:
        raise _Contained(error) from error


class _Contained(Exception):
    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


async def _await(awaitable):
    return await awaitable


def _raise_timeout(signum, frame):
    raise RewardTimeout("reward ran past its timeout")
