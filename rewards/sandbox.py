"""Run untrusted Python (model-written code) in a sandbox: the only place such code may run.

Two entry points, both returning a ``SandboxResult`` (status ``passed`` / ``failed`` /
``timeout`` / ``killed`` / ``error``, stdout and stderr tails, seconds):

- ``run_tests(solution, Checker(...), limits)``: what the code rewards use. The solution
  runs in its own process; the tests run in another (the judge, see
  ``rewards/sandbox_boot.py``) that calls the solution's functions through pipes with
  plain data and compares on its side; the tally comes back on a descriptor the solution
  never holds. ``passed`` means every test passed; ``tests_passed`` / ``tests_total``
  count them.
- ``run_python(source, limits)``: run a program; ``passed`` means it ran to its last line
  (a per-run marker printed after it; an early ``exit(0)`` fails). The program decides
  its own outcome here, so nothing is graded this way.

At every level: a separate process group killed (SIGKILL) at the end and on timeout; a
wall-clock timeout; rlimits on CPU seconds, address space, processes, file size, open
files, no core dumps; a scrubbed environment and ``python -I -S``; stdin /dev/null; as
root, throwaway uids (never root; one for the judge, another for the solution). What
each isolation level adds (``bwrap`` > ``unshare`` > ``landlock`` > ``rlimits``) is in docs/sandbox.md
and ``rewards/sandbox_levels.py``. The level is detected once (``sandbox_isolation()``);
``POSTTRAIN_SANDBOX=bwrap|unshare|landlock|rlimits`` forces one (an error if it does not work).
"""

from __future__ import annotations

import ast
import functools
import itertools
import marshal
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from .sandbox_levels import CWD, IS_ROOT, LEVELS, command, find_tool, interpreter

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error", "killed"]
_UID_BASE, _UID_SPAN = 1_800_000_000, 100_000_000  # throwaway uids, far above real and subordinate ones
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
_TAIL_BYTES = 4000


class SandboxUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock
    memory_mb: int = 512  # RLIMIT_AS per process
    max_processes: int = 16  # RLIMIT_NPROC (threads count too); worst case memory is the product
    file_size_mb: int = 16  # RLIMIT_FSIZE, stdout and stderr included
    open_files: int = 64
    tmpfs_mb: int = 64  # bwrap and unshare: size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /sandbox)

    def cpu_seconds(self) -> int:
        return int(self.timeout_s) + 1


@dataclass
class SandboxResult:
    status: Status
    returncode: int | None
    stdout: str  # tail, marker removed
    stderr: str  # tail
    seconds: float
    isolation: str
    tests_passed: int = 0  # run_tests: the judge's count (0 when it gave no verdict)
    tests_total: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Checker:
    """The tests of one problem, run by the judge (never in the solution's process).

    ``kind="asserts"``: ``tests`` is a list of statements run one by one (the share passing
    is counted); ``kind="check"`` (HumanEval): ``tests`` is source defining ``check(candidate)``,
    called on ``entry_point``. ``prelude`` is trusted problem code run in the judge first (the
    HumanEval prompt: its imports and helpers such as ``poly``). Only ``entry_point`` (or, when
    it is None, the solution's non-builtin callables) reaches the solution.
    """

    kind: Literal["asserts", "check"]
    tests: list[str] | str
    entry_point: str | None = None
    prelude: str = ""
    preimport: tuple[str, ...] = field(default=())  # imported before the fork, shared by both processes

    def count(self) -> int:
        return len(self.tests) if self.kind == "asserts" else 1


def run_python(source: str, limits: SandboxLimits | None = None, isolation: str | None = None) -> SandboxResult:
    """Run ``source`` in the sandbox; ``isolation`` picks a level (default: the detected one)."""
    level = _level(isolation)
    marker = secrets.token_hex(16).encode()
    result, _ = _run(level, "program", source, marker, limits or SandboxLimits())
    if result.status != "passed":
        return result
    out = result.stdout.encode()  # the marker is printed after the last line: without it, the program stopped early
    result.status = "passed" if out.endswith(b"\n" + marker + b"\n") else "failed"
    result.stdout = _text(out[: -len(marker) - 2] if result.status == "passed" else out)
    return result


def run_tests(solution: str, checker: Checker, limits: SandboxLimits | None = None,
              isolation: str | None = None) -> SandboxResult:
    """Run ``checker``'s tests against ``solution`` (see ``Checker``); ``passed`` when all pass."""
    level = _level(isolation)
    tests = {"kind": checker.kind, "tests": checker.tests, "entry_point": checker.entry_point,
             "prelude": checker.prelude}
    preimport = checker.preimport or top_level_imports(checker.prelude)
    result, verdict = _run(level, "judge", solution, marshal.dumps(tests), limits or SandboxLimits(), preimport)
    result.tests_total = checker.count()
    if verdict and verdict[1] == result.tests_total:
        result.tests_passed = max(0, min(verdict[0], result.tests_total))
    if result.status == "passed" and result.tests_passed != result.tests_total:
        result.status = "failed"
    return result


def top_level_imports(source: str) -> tuple[str, ...]:
    """Modules ``source`` imports at top level (HumanEval prompts: typing, math...)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    names = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module and not node.level]
    return tuple(dict.fromkeys(names))


def _level(isolation: str | None) -> str:
    level = isolation or sandbox_isolation()
    if level not in LEVELS:
        raise ValueError(f"unknown sandbox isolation {level!r}; known: {LEVELS}")
    return level


@functools.cache
def sandbox_isolation() -> str:
    """The strongest level that works here (checked by running a probe); logged once."""
    forced = os.environ.get("POSTTRAIN_SANDBOX")
    if forced:
        if forced not in LEVELS:
            raise SandboxUnavailable(f"POSTTRAIN_SANDBOX={forced!r} is not one of {LEVELS}")
        problem = _probe(forced)
        if problem:
            raise SandboxUnavailable(f"POSTTRAIN_SANDBOX={forced}: it does not work here: {problem}")
        return forced
    for level in LEVELS:
        problem = _probe(level)
        if not problem:
            log.info("code sandbox isolation: %s%s", level, "" if level == "bwrap" else " (weaker; see docs/sandbox.md)")
            return level
        log.info("code sandbox: %s unavailable: %s", level, problem)
    raise SandboxUnavailable("no sandbox level works here, not even a plain limited subprocess")


@functools.cache
def available_isolations() -> tuple[str, ...]:
    """Every level that works here (for tests and the benchmark)."""
    return tuple(level for level in LEVELS if not _probe(level))


@functools.cache
def _probe(level: str) -> str:
    """'' when ``level`` runs a judged program here, else why not."""
    for tool in {"bwrap": ["bwrap"], "unshare": ["unshare"]}.get(level, []):
        if not find_tool(tool):
            return f"{tool} is not installed (not on PATH, nor in the system dirs)"
    if interpreter(level) is None:
        return "no Python interpreter the sandbox uid may read"
    checker = Checker("asserts", ["assert f(2) == 3"], "f")
    result = run_tests("import json, collections\ndef f(x):\n    return x + 1\n", checker,
                       SandboxLimits(timeout_s=10), isolation=level)
    if result.passed:
        return ""
    return f"probe {result.status} (exit {result.returncode}): {result.stderr.strip()[-300:]}"


def _run(level: str, mode: str, solution: str, rest: bytes, limits: SandboxLimits,
         preimport: tuple[str, ...] = ()) -> tuple[SandboxResult, tuple[int, int] | None]:
    """Start the bootstrap at ``level``; stdin holds the solution's length, the solution, then ``rest``
    (the marker or the tests), which the bootstrap reads only after the solution's process split off."""
    uids = _throwaway_uids() if IS_ROOT else (-1, -1)
    workdir = _make_workdir(uids[1]) if level in ("landlock", "rlimits") else None
    start = time.perf_counter()
    files = [tempfile.TemporaryFile() for _ in range(4)]
    stdin, stdout, stderr, verdict = files
    try:
        body = solution.encode("utf-8", "surrogateescape")
        stdin.write(b"%d\n" % len(body) + body + rest)
        stdin.seek(0)
        config = {"mode": mode, "limits": _limit_values(level, limits), "uids": list(uids),
                  "verdict_fd": verdict.fileno(), "preimport": list(preimport)}
        try:
            process = subprocess.Popen(
                command(level, config, limits.tmpfs_mb << 20, workdir), stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=(verdict.fileno(),), cwd=workdir or "/", env=_scrubbed_env(workdir or CWD),
                start_new_session=True,
            )
        except OSError as error:
            return SandboxResult("error", None, "", f"cannot start the sandbox: {error}", 0.0, level), None
        timed_out = not _wait_exit(process.pid, limits.timeout_s)
        _kill_group(process.pid)
        returncode = process.wait()
        if workdir and uids[0] >= 0:
            _kill_uid(uids[1])  # no pid namespace: catch what the solution's uid started outside the group
        seconds = time.perf_counter() - start
        out, err = _tail(stdout), _tail(stderr)
        counts = _read_verdict(verdict) if mode == "judge" and not timed_out else None
    finally:
        for handle in files:
            handle.close()
        if workdir:
            shutil.rmtree(workdir, onerror=_force_remove)
    status = _status(level, returncode, timed_out, err, counts if mode == "judge" else True)
    return SandboxResult(status, returncode, _text(out), _text(err), seconds, level), counts


def _read_verdict(handle) -> tuple[int, int] | None:
    """The judge's "passed total" line (the solution's process never held this descriptor)."""
    handle.seek(0)
    parts = handle.read(64).split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def _limit_values(level: str, limits: SandboxLimits) -> list[int]:
    nproc = limits.max_processes
    if level in ("landlock", "rlimits") and not IS_ROOT:
        nproc += _own_task_count()  # RLIMIT_NPROC counts all of our uid's tasks when we cannot switch uid
    return [limits.cpu_seconds(), limits.memory_mb << 20, nproc, limits.file_size_mb << 20, limits.open_files]


def _status(level: str, returncode: int, timed_out: bool, stderr: bytes, verdict) -> Status:
    """``passed`` here is provisional: the caller checks the marker or the judge's count."""
    if timed_out:
        return "timeout"
    signal_number = -returncode if returncode < 0 else 0
    if level == "bwrap" and returncode > 128:  # bwrap reports a signalled child as 128 + signal
        signal_number = returncode - 128
    if signal_number == signal.SIGXCPU:
        return "timeout"
    if signal_number:
        return "killed"
    if returncode == 1 and stderr.startswith((b"bwrap:", b"unshare:")):
        return "error"
    if returncode == 0 and verdict:
        return "passed"
    return "failed"


def _throwaway_uids() -> tuple[int, int]:
    """(judge, solution): two uids no other process has, so neither can signal or trace the other."""
    with _uid_lock:
        count = next(_uid_counter)
    slot = (os.getpid() * 1000 + count % 1000) % (_UID_SPAN // 2)
    return _UID_BASE + 2 * slot, _UID_BASE + 2 * slot + 1


def _make_workdir(uid: int) -> str:
    workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    if uid >= 0:
        os.chown(workdir, uid, uid)
    return workdir


def _force_remove(function, path: str, _error) -> None:
    """A program may leave dirs it made unreadable (chmod 0): make the parent ours again and retry."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            function(path)
    except OSError:
        log.warning("sandbox: could not remove %s", path)


def _scrubbed_env(home: str) -> dict[str, str]:
    # TMPDIR=home: at landlock and rlimits the private workdir is the only temp space that is the program's own
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait (without reaping) until ``pid`` exits; False on timeout. A pidfd wakes us at once."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return _poll_exit(pid, timeout_s)
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _poll_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.002)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the throwaway ``uid`` (``kill -1`` as that uid spares the rest)."""
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill:
        subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], env={}, cwd="/",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _own_task_count() -> int:
    """Tasks (threads) of our uid: RLIMIT_NPROC counts them all when we cannot switch uid."""
    count, uid = 0, os.getuid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def _tail(handle) -> bytes:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - _TAIL_BYTES))
    return handle.read()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
