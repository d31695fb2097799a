"""The sandbox's isolation levels: the command that starts its interpreter, and the file tree it sees.

``bwrap`` and ``unshare`` show the program the same minimal tree (``visible_paths()``):
read-only /usr, the top-level library dirs, the dynamic loader's cache and the
interpreter's own prefix; private size-capped tmpfs at ``SCRATCH``; a few /dev nodes; a
fresh /proc of its own pid namespace. bwrap builds it from its arguments; at ``unshare``
the bootstrap (``rewards/sandbox_boot.py``) builds it and pivots into it. What each level
guarantees is in docs/sandbox.md.
"""

from __future__ import annotations

import functools
import marshal
import os
import shutil
import stat
import sys

LEVELS = ("bwrap", "unshare", "landlock", "rlimits")
IS_ROOT = os.geteuid() == 0
CWD = "/sandbox"
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", CWD)  # private, size-capped, gone with the sandbox
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# What each level guarantees on top of what every level gives (docs/sandbox.md says it in words;
# tests/test_sandbox_redteam.py checks each claim at every level present and skips, loudly, the rest).
GUARANTEES: dict[str, frozenset[str]] = {
    "bwrap": frozenset({"private_temp", "capped_temp", "host_writes_blocked", "host_files_hidden", "no_network",
                        "no_udp", "own_processes_only"}),
    "unshare": frozenset({"private_temp", "capped_temp", "host_writes_blocked", "host_files_hidden", "no_network",
                          "no_udp", "own_processes_only"}),
    # no namespaces: Landlock denies paths outside an allow-list, TCP bind/connect and /proc (not UDP).
    "landlock": frozenset({"private_temp", "host_writes_blocked", "host_files_hidden", "no_network",
                           "own_processes_only"}),
    "rlimits": frozenset(),
}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BOOT_SOURCE = open(os.path.join(os.path.dirname(__file__), "sandbox_boot.py"), encoding="utf-8").read()


@functools.cache
def find_tool(name: str) -> str | None:
    """Absolute path of ``name``: the caller's PATH first (the sandbox's own PATH is scrubbed, so a
    bwrap installed in ~/.local/bin or a conda env would otherwise be missed), then the system dirs."""
    found = shutil.which(name) or shutil.which(name, path=_SYSTEM_PATH)
    return os.path.realpath(found) if found else None


@functools.cache
def visible_paths() -> tuple[tuple[str, ...], ...]:
    """(kind, host path) entries of the minimal tree: ``dir`` and ``file`` bind read-only, ``link`` copies a symlink."""
    entries: list[tuple[str, ...]] = [("dir", "/usr")]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            entries.append(("link", top))
        elif os.path.isdir(top):
            entries.append(("dir", top))
    entries += [("file", path) for path in ("/etc/ld.so.cache", "/etc/localtime") if os.path.isfile(path)]
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}):
        if not prefix.startswith("/usr/") and os.path.isdir(prefix):
            entries.append(("dir", prefix))
    return tuple(entries)


def command(level: str, config: dict, tmpfs_bytes: int, workdir: str | None) -> list[str]:
    """The command line that runs the bootstrap with ``config`` at ``level`` (``workdir``: the host dir
    that is the program's cwd at ``landlock`` and ``rlimits``)."""
    if level == "landlock":
        readable = [path for kind, path in visible_paths() if kind != "link"]
        config = {**config, "landlock": {"read": readable, "write": [workdir, *DEV_NODES]}}
    if level == "unshare":
        config = {**config, "root": {"paths": [*visible_paths(), *(("file", node) for node in DEV_NODES)],
                                     "scratch": list(SCRATCH), "tmpfs_bytes": tmpfs_bytes, "cwd": CWD}}
    python = [interpreter(level), "-I", "-S", "-u", "-c", _BOOT_SOURCE, marshal.dumps(config).hex()]
    if level == "bwrap":
        return [find_tool("bwrap"), *_bwrap_args(tmpfs_bytes), *python]
    if level == "unshare":
        user = [] if IS_ROOT else ["--user", "--map-root-user"]
        return [find_tool("unshare"), *user, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
                *python]
    return python


@functools.cache
def _bwrap_args(tmpfs_bytes: int) -> tuple[str, ...]:
    args = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session"]
    if not IS_ROOT:
        args.append("--unshare-user")  # root drops to throwaway uids in the bootstrap instead
    made: set[str] = set()
    for kind, path in visible_paths():
        if kind == "link":
            args += ["--symlink", os.readlink(path), path]
            continue
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):  # ancestors readable by the sandbox uid, whatever they are on the host
            ancestor = "/" + "/".join(parts[:depth])
            if ancestor not in made and not ancestor.startswith("/usr"):
                args += ["--perms", "0755", "--dir", ancestor]
                made.add(ancestor)
        args += ["--ro-bind", path, path]
    args += ["--dev", "/dev"]  # bwrap's own minimal /dev; its /dev/shm is replaced below
    for mount in SCRATCH:
        args += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", mount]
    return (*args, "--proc", "/proc", "--remount-ro", "/", "--chdir", CWD)


@functools.cache
def interpreter(level: str) -> str | None:
    """Our base interpreter. At ``rlimits`` as root, one the throwaway uid may read (e.g. /usr/bin/python3):
    the other levels bind the interpreter's prefix into their own tree, readable by any uid."""
    base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if level in ("bwrap", "unshare") or not IS_ROOT:
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
