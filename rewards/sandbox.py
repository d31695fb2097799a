"""Run untrusted Python (model-written code) in a sandbox: the only place such code may run.

``run_python(source, limits)`` runs ``source`` in a fresh interpreter and returns a
``SandboxResult`` (status ``passed`` / ``failed`` / ``timeout`` / ``killed`` / ``error``,
stdout and stderr tails, seconds). What always holds, at every isolation level:

- a separate process in its own session, killed as a group (SIGKILL) on timeout and
  at the end; a wall-clock timeout;
- rlimits on CPU seconds, address space, processes (RLIMIT_NPROC), file size, open
  files, and no core dumps, set by the bootstrap before the program's first line;
- a scrubbed environment (nothing of ours: no tokens, no paths) and ``python -I -S``
  (no site-packages, no PYTHON* variables); stdin is /dev/null;
- ``passed`` needs the program to run to its end: the bootstrap appends a per-run
  random marker to stdout only after the last line ran, so ``exit(0)`` / ``os._exit(0)``
  before the tests does not pass. (A program that digs the marker out of the
  bootstrap's frame could forge it; this guards against accidents and cheap hacks,
  not a determined adversary who also wins nothing but a reward.)
- as root, the program runs under a throwaway uid (never root): it cannot signal our
  processes, and RLIMIT_NPROC counts only its own processes (root is exempt from it).

The isolation level is detected once (``sandbox_isolation()``), strongest first:

- ``bwrap`` (bubblewrap): new net, pid, ipc and uts namespaces (no network at all, only
  a down loopback); a read-only view of /usr and the interpreter only (no /root, /home,
  /work, no host /tmp); private size-capped tmpfs /tmp and cwd /sandbox; its own /proc.
- ``unshare`` (util-linux): new net and pid namespaces and /proc; the host filesystem is
  visible, writable only where the throwaway uid may write (world-writable dirs); cwd is
  a private temp dir, deleted after.
- ``rlimits``: no namespaces: the network is reachable and the filesystem is as above.
  Not root (a laptop without user namespaces): the program runs as you and could signal
  your processes. Install bubblewrap (``apt-get install bubblewrap``).

``POSTTRAIN_SANDBOX=bwrap|unshare|rlimits`` forces a level (an error if it does not work).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

LEVELS = ("bwrap", "unshare", "rlimits")
Status = Literal["passed", "failed", "timeout", "error", "killed"]
_IS_ROOT = os.geteuid() == 0
_UID_BASE, _UID_SPAN = 1_800_000_000, 100_000_000  # throwaway uids, far above real and subordinate ones
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
_TAIL_BYTES = 4000
_CWD_IN_BWRAP = "/sandbox"


class SandboxUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock
    memory_mb: int = 512  # RLIMIT_AS per process
    max_processes: int = 16  # RLIMIT_NPROC (threads count too); worst case memory is the product
    file_size_mb: int = 16  # RLIMIT_FSIZE, stdout and stderr included
    open_files: int = 64
    tmpfs_mb: int = 64  # bwrap: size of the private /tmp and /sandbox

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

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs inside the sandbox, before the program: limits, uid, then the program, then the marker.
_BOOTSTRAP = r"""
import os, resource, sys
def _boot():
    cpu, memory, nproc, fsize, nofile, uid = map(int, sys.argv[1:7])
    for limit, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory, memory),
                              (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_FSIZE, fsize, fsize),
                              (resource.RLIMIT_NOFILE, nofile, nofile), (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(limit, (soft, hard))
    if uid >= 0:
        os.setgroups([]); os.setgid(uid); os.setuid(uid)
    payload = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
    marker, _, source = payload.partition(b"\n")
    del payload
    try:
        exec(compile(source, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as stop:
        sys.stderr.write("program exited (%r) before it ran to its end\n" % (stop.code,)); sys.stderr.flush()
        os._exit(3)
    except BaseException:
        import traceback; traceback.print_exc(); sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush(); sys.stderr.flush()
    os.write(1, b"\n" + marker + b"\n")
    os._exit(0)
_boot()
"""


def run_python(source: str, limits: SandboxLimits | None = None, isolation: str | None = None) -> SandboxResult:
    """Run ``source`` in the sandbox; ``isolation`` picks a level (default: the detected one)."""
    level = isolation or sandbox_isolation()
    if level not in LEVELS:
        raise ValueError(f"unknown sandbox isolation {level!r}; known: {LEVELS}")
    return _run(level, source, limits or SandboxLimits())


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
            log.info("code sandbox isolation: %s%s", level, "" if level == "bwrap" else " (weaker; see rewards/sandbox.py)")
            return level
        log.info("code sandbox: %s unavailable: %s", level, problem)
    raise SandboxUnavailable("no sandbox level works here, not even a plain limited subprocess")


@functools.cache
def available_isolations() -> tuple[str, ...]:
    """Every level that works here (for tests and the benchmark)."""
    return tuple(level for level in LEVELS if not _probe(level))


@functools.cache
def _probe(level: str) -> str:
    """'' when ``level`` runs a program here, else why not."""
    if level == "bwrap" and not shutil.which("bwrap"):
        return "bwrap is not installed"
    if level == "unshare" and not shutil.which("unshare"):
        return "unshare is not installed"
    if _interpreter(level) is None:
        return "no Python interpreter the sandbox uid may read"
    result = _run(level, "import json, collections\nprint('ok')", SandboxLimits(timeout_s=10))
    if result.passed and result.stdout.strip() == "ok":
        return ""
    return f"probe {result.status} (exit {result.returncode}): {result.stderr.strip()[-300:]}"


def _run(level: str, source: str, limits: SandboxLimits) -> SandboxResult:
    marker = secrets.token_hex(16).encode()
    uid = _throwaway_uid() if _IS_ROOT else -1
    workdir = None if level == "bwrap" else _make_workdir(uid)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            stdin.write(marker + b"\n" + source.encode("utf-8", "surrogateescape"))
            stdin.seek(0)
            try:
                process = subprocess.Popen(
                    _command(level, limits, uid), stdin=stdin, stdout=stdout, stderr=stderr,
                    cwd=workdir or "/", env=_scrubbed_env(workdir or _CWD_IN_BWRAP), start_new_session=True,
                )
            except OSError as error:
                return SandboxResult("error", None, "", f"cannot start the sandbox: {error}", 0.0, level)
            timed_out = not _wait_exit(process.pid, limits.timeout_s)
            _kill_group(process.pid)
            returncode = process.wait()
            if level == "rlimits" and uid >= 0:
                _kill_uid(uid)  # no pid namespace: catch what escaped the group with setsid()
            seconds = time.perf_counter() - start
            out, err = _tail(stdout), _tail(stderr)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    passed = returncode == 0 and out.endswith(b"\n" + marker + b"\n")
    if passed:
        out = out[: -len(marker) - 2]
    status = _status(level, returncode, timed_out, passed, err)
    return SandboxResult(status, returncode, _text(out), _text(err), seconds, level)


def _status(level: str, returncode: int, timed_out: bool, passed: bool, stderr: bytes) -> Status:
    if timed_out:
        return "timeout"
    if passed:
        return "passed"
    signal_number = -returncode if returncode < 0 else 0
    if level == "bwrap" and returncode > 128:  # bwrap reports a signalled child as 128 + signal
        signal_number = returncode - 128
    if signal_number == signal.SIGXCPU:
        return "timeout"
    if signal_number:
        return "killed"
    if returncode == 1 and stderr.startswith((b"bwrap:", b"unshare:")):
        return "error"
    return "failed"


def _command(level: str, limits: SandboxLimits, uid: int) -> list[str]:
    mib = 1024 * 1024
    python = [
        _interpreter(level), "-I", "-S", "-u", "-c", _BOOTSTRAP,
        str(limits.cpu_seconds()), str(limits.memory_mb * mib), str(limits.max_processes),
        str(limits.file_size_mb * mib), str(limits.open_files), str(uid),
    ]
    if level == "bwrap":
        return ["bwrap", *_bwrap_args(limits.tmpfs_mb * mib), *python]
    if level == "unshare":
        user = [] if _IS_ROOT else ["--user", "--map-root-user"]
        return ["unshare", *user, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", *python]
    if not _IS_ROOT:
        python[-4] = str(limits.max_processes + _own_task_count())  # RLIMIT_NPROC counts all of our tasks
    return python


@functools.cache
def _bwrap_args(tmpfs_bytes: int) -> tuple[str, ...]:
    args = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    if not _IS_ROOT:
        args.append("--unshare-user")  # root drops to a throwaway uid in the bootstrap instead
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in ("/etc/ld.so.cache", "/etc/localtime"):
        args += ["--ro-bind-try", path, path]
    made = set()
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}):
        if prefix.startswith("/usr/"):
            continue
        parts = prefix.strip("/").split("/")
        for depth in range(1, len(parts)):  # ancestors readable by the sandbox uid, whatever they are on the host
            ancestor = "/" + "/".join(parts[:depth])
            if ancestor not in made:
                args += ["--perms", "0755", "--dir", ancestor]
                made.add(ancestor)
        args += ["--ro-bind", prefix, prefix]
    for mount in ("/tmp", _CWD_IN_BWRAP):
        args += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", mount]
    return (*args, "--dev", "/dev", "--proc", "/proc", "--chdir", _CWD_IN_BWRAP)


@functools.cache
def _interpreter(level: str) -> str | None:
    """Our base interpreter; below bwrap, as root, one the throwaway uid may read (e.g. /usr/bin/python3)."""
    base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if level == "bwrap" or not _IS_ROOT:
        return base
    for candidate in (base, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _others_can_use(os.path.realpath(candidate)):
            return os.path.realpath(candidate)
    return None


def _others_can_use(path: str) -> bool:
    """Every ancestor searchable by any user, the file executable by any user."""
    current = os.path.dirname(path)
    while current != "/":
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return False
        current = os.path.dirname(current)
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def _throwaway_uid() -> int:
    with _uid_lock:
        count = next(_uid_counter)
    return _UID_BASE + (os.getpid() * 1000 + count % 1000) % _UID_SPAN


def _make_workdir(uid: int) -> str:
    workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    if uid >= 0:
        os.chown(workdir, uid, uid)
    return workdir


def _scrubbed_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


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
