"""What runs inside the sandbox around the untrusted program: a script for ``python -I -S -c``.

The host never imports this module; ``rewards.sandbox`` reads its source and runs it as
the sandbox's first code. It may use only the standard library and must trust nothing
the program does. In order, as the sandbox's first process:

1. (``unshare`` level) build a minimal file tree (read-only /usr, libraries and the
   interpreter; private size-capped tmpfs /tmp, /var/tmp, /dev/shm, /sandbox; a few /dev
   nodes; a fresh /proc) and pivot into it, so the host's tree is gone, not just hidden;
2. set the rlimits;
3. read the solution (only the solution) from stdin;
4. ``program`` mode: drop to the throwaway uid and run it, then print the run's marker;
   ``judge`` mode: fork the solution into its own process (its own uid when we are
   root), and only then read the tests. This process (the judge) runs the tests and
   calls the solution's functions through pipes with pickled plain data, decoded here
   by an unpickler that builds nothing but builtin values, and compares here. The
   verdict goes to a file descriptor the solution process closed before its first line.

The solution therefore never holds the tests, the judge's memory or the verdict channel:
shadowed builtins, always-equal objects, forged output and early exits change nothing here.
"""

import _pickle  # the C pickler alone: ``pickle`` and ``json`` would import ``re`` on every run
import builtins
import marshal
import os
import resource
import sys

_MS = {"rdonly": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "remount": 32, "bind": 4096, "rec": 16384}
# statvfs flags a remount inside a user namespace must keep (the kernel locks them), as mount flags.
_LOCKED = ((2, 2), (4, 4), (8, 8), (1024, 1024), (2048, 2048), (4096, 1 << 21))
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_FRAME_BYTES = 8
_MAX_FRAME = 64 << 20
_DEV_NODES = ("null", "zero", "full", "random", "urandom")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, what):
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    return libc, check


def enter_minimal_root(spec):
    """Mount a tree holding only ``spec``'s paths and pivot into it (we are root in new mount/pid namespaces)."""
    libc, check = _libc()
    ms = _MS

    def mount(source, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def bind(path, target, device=False):
        mount(path, target, None, ms["bind"] | ms["rec"])
        kept = sum(flag for stat_flag, flag in _LOCKED if os.statvfs(path).f_flag & stat_flag)
        extra = ms["noexec"] if device else ms["rdonly"] | ms["nodev"]  # a device node needs dev, and writes
        mount(None, target, None, ms["bind"] | ms["remount"] | ms["nosuid"] | extra | kept)

    os.umask(0o022)  # the tree's dirs must be searchable by the throwaway uids, whatever our caller's umask
    root = "/tmp"  # any directory serves as the new root's mount point: only this namespace sees it
    mount("tmpfs", root, "tmpfs", ms["nosuid"] | ms["nodev"], "size=1m,mode=0755")
    for kind, path in spec["paths"]:  # ("dir" | "file" | "link", host path[, link target])
        target = root + path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if kind == "link":
            os.symlink(os.readlink(path), target)
        elif kind == "dir":
            os.makedirs(target, mode=0o755, exist_ok=True)
            bind(path, target)
        else:
            open(target, "w").close()
            bind(path, target, device=path.startswith("/dev/"))
    for scratch in spec["scratch"]:
        os.makedirs(root + scratch, mode=0o755, exist_ok=True)
        mount("tmpfs", root + scratch, "tmpfs", ms["nosuid"] | ms["nodev"], f"size={spec['tmpfs_bytes']},mode=1777")
    os.makedirs(root + "/proc", mode=0o555)
    mount("proc", root + "/proc", "proc", ms["nosuid"] | ms["nodev"] | ms["noexec"])
    os.chdir(root)
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    check(libc.syscall(number, b".", b"."), "pivot_root")  # the old root now sits on top of ours...
    check(libc.umount2(b".", 2), "detach the host tree")  # ...and is detached (MNT_DETACH): gone for good
    os.chdir("/")
    mount(None, "/", None, ms["remount"] | ms["bind"] | ms["rdonly"] | ms["nosuid"] | ms["nodev"])
    os.chdir(spec["cwd"])


# Landlock (landlock.h): filesystem rights per ABI version, TCP rights (ABI 4), scopes (ABI 6).
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl_dev: rights a file can hold
_READ_RIGHTS = 1 | 4 | 8  # execute, read file, read dir


def landlock(spec):
    """Allow reads under ``spec["read"]``, everything under ``spec["write"]``, no TCP, no signals or abstract
    sockets out of this process's domain: for when there are no namespaces (the ``landlock`` level)."""
    import ctypes
    import struct

    libc, _ = _libc()
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 4:
        raise OSError(f"landlock ABI {abi} < 4 (TCP rules): this kernel cannot give the landlock level")
    handled = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    attr = struct.pack("<QQQ", handled, 3, 3 if abi >= 6 else 0)  # net: bind+connect TCP; scope: unix+signal
    ruleset = syscall(444, attr, 24 if abi >= 6 else 16, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    for rights, paths in ((_READ_RIGHTS, spec["read"]), (handled, spec["write"])):
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:  # e.g. a prefix under /root the throwaway uid cannot reach anyway
                continue
            allowed = rights & handled if os.path.isdir(path) else rights & handled & _FILE_RIGHTS
            rule = struct.pack("<Qi", allowed, fd)
            if syscall(445, ruleset, 1, rule, 0) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or syscall(446, ruleset, 0) != 0:  # no_new_privs, then restrict_self
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)


def set_limits(cpu, memory, nproc, fsize, nofile):
    for limit, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory, memory),
                              (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_FSIZE, fsize, fsize),
                              (resource.RLIMIT_NOFILE, nofile, nofile), (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(limit, (soft, hard))


def drop_privileges(uid, shield):
    """Become ``uid`` (as root); without root, drop every capability (a user namespace may have
    granted some) and, for the judge (``shield``), refuse ptrace and /proc/<pid>/mem to same-uid peers."""
    if uid >= 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        return
    import ctypes

    libc, check = _libc()
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    check(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    if shield:
        not_dumpable()


def not_dumpable():
    """PR_SET_DUMPABLE 0: same-uid processes without CAP_SYS_PTRACE can no longer trace us or open our
    /proc/<pid>/mem or fd/. (As root the judge needs none: changing uid already clears the flag.)"""
    libc, check = _libc()
    check(libc.prctl(4, 0, 0, 0, 0), "not dumpable")


def read_exactly(fd, count):
    chunks = []
    while count > 0:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_solution():
    """Only the solution's bytes: the rest of stdin (marker or tests) stays unread until after the fork."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        header += byte
    return read_exactly(0, int(header))


def read_rest():
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def run_program(source):
    """Plain mode: run to the end, then print the marker (an early exit never prints it)."""
    marker = read_rest()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        exec(compile(source, "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as stop:
        sys.stderr.write("program exited (%r) before it ran to its end\n" % (stop.code,))
        sys.stderr.flush()
        os._exit(3)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + marker + b"\n")
    os._exit(0)


def send(fd, data):
    view = memoryview(len(data).to_bytes(_FRAME_BYTES, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def receive(fd):
    """One frame's bytes, or None at end of stream."""
    head = read_exactly(fd, _FRAME_BYTES)
    if len(head) < _FRAME_BYTES:
        return None
    size = int.from_bytes(head, "little")
    if size > _MAX_FRAME:
        raise ValueError(f"reply of {size} bytes is too large")
    data = read_exactly(fd, size)
    return data if len(data) == size else None


def serve(source, requests, replies):
    """The solution's process: define the solution, then answer calls until the judge hangs up."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "<solution>", "exec"), namespace)
        names = [name for name, value in list(namespace.items()) if isinstance(name, str) and callable(value)]
        send(replies, _pickle.dumps(("ready", names)))
    except BaseException as error:  # SystemExit too: the function was never defined
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        send(replies, _pickle.dumps(("broken", type(error).__name__)))
        os._exit(1)
    while (request := receive(requests)) is not None:
        name, args, kwargs = _pickle.loads(request)  # from the judge: trusted
        try:
            reply = _pickle.dumps(("ok", namespace[name](*args, **kwargs)), protocol=5)
        except BaseException as error:  # noqa: BLE001 - the judge decides what an error means
            try:
                reply = _pickle.dumps(("raise", type(error).__name__, str(error)[:500]))
            except BaseException:  # noqa: BLE001
                reply = _pickle.dumps(("raise", "Exception", "unprintable error"))
        send(replies, reply)
    os._exit(0)


class PlainData(_pickle.Unpickler):
    """Builds builtin values only: no class of the solution's, so no ``__eq__`` of its making."""

    def find_class(self, module, name):
        if module == "builtins" and name in ("complex", "bytearray", "set", "frozenset", "slice", "range"):
            return getattr(builtins, name)
        raise _pickle.UnpicklingError(f"{module}.{name}: the solution returned something that is not plain data")


class CandidateError(Exception):
    pass


class Channel:
    def __init__(self, replies, requests):
        self.replies, self.requests = replies, requests

    def ready(self):
        data = receive(self.replies)
        message = PlainData(_bytes_io(data)).load() if data else ("broken", "the solution process died")
        if type(message) is tuple and len(message) == 2 and message[0] == "ready" and type(message[1]) is list:
            return [name for name in message[1] if type(name) is str]
        return None

    def call(self, name, args, kwargs):
        send(self.requests, _pickle.dumps((name, args, kwargs)))  # TypeError for non-data arguments
        data = receive(self.replies)
        if data is None:
            raise CandidateError("the solution process ended during a call")
        reply = PlainData(_bytes_io(data)).load()
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "raise" and type(reply[1]) is str:
            kind = getattr(builtins, reply[1], None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = CandidateError
            raise kind(f"{reply[1]}: {reply[2]}" if type(reply[2]) is str else reply[1])
        raise CandidateError("the solution process broke the call protocol")


def _bytes_io(data):
    import io

    return io.BytesIO(data)


def proxy(channel, name):
    def candidate(*args, **kwargs):
        return channel.call(name, args, kwargs)

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def run_checker(checker, channel):
    """Count the tests that pass; the solution's functions are reached only through ``channel``."""
    tests = checker["tests"]
    total = len(tests) if checker["kind"] == "asserts" else 1
    names = channel.ready()
    if names is None:
        return {"passed": 0, "total": total, "loaded": False}
    namespace = {"__name__": "__main__"}
    exec(compile(checker.get("prelude", ""), "<prelude>", "exec"), namespace)  # the problem's own helpers
    entry = checker.get("entry_point")
    if not entry:
        import keyword

    wanted = [entry] if entry else [n for n in names if n.isidentifier() and not keyword.iskeyword(n)
                                    and not n.startswith("_") and not hasattr(builtins, n) and n not in namespace]
    for name in wanted:
        namespace[name] = proxy(channel, name)
    if checker["kind"] == "check":
        exec(compile(tests, "<test>", "exec"), namespace)
        tests = [f"check({entry})"]
    passed = 0
    for test in tests:
        try:
            exec(compile(test, "<test>", "exec"), namespace)
            passed += 1
        except Exception as error:  # noqa: BLE001 - a failing test
            sys.stderr.write(f"failed: {test[:200]} -> {type(error).__name__} {str(error)[:300]}\n")
    return {"passed": passed, "total": total, "loaded": True}


def close_all_but(*keep):
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 4096)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def judge(source, config):
    judge_uid, solution_uid = config["uids"]
    if judge_uid < 0:
        not_dumpable()  # before the fork: a same-uid solution must never get a moment to attach to the judge
    to_solution, requests = os.pipe()
    replies, from_solution = os.pipe()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        close_all_but(to_solution, from_solution)  # the verdict fd and the judge's pipe ends among them
        try:
            drop_privileges(solution_uid, shield=False)
            if config.get("landlock"):
                landlock(config["landlock"])
            serve(source, to_solution, from_solution)
        finally:
            os._exit(1)
    os.close(to_solution)
    os.close(from_solution)
    del source
    drop_privileges(judge_uid, shield=True)
    checker = marshal.loads(read_rest())  # from the host: trusted
    if config.get("landlock"):
        landlock(config["landlock"])  # its own domain: the solution's cannot signal into it
    try:
        verdict = run_checker(checker, Channel(replies, requests))
    except Exception as error:  # noqa: BLE001 - e.g. the checker's own code failed to load
        sys.stderr.write(f"judge: {type(error).__name__}: {error}\n")
        verdict = {"passed": 0, "total": 0, "loaded": False}
    os.write(config["verdict_fd"], b"%d %d" % (verdict["passed"], verdict["total"]))
    os._exit(0)


def main():
    config = marshal.loads(bytes.fromhex(sys.argv[1]))  # from the host: trusted
    if config.get("root"):
        enter_minimal_root(config["root"])
    set_limits(*config["limits"])
    for module in config.get("preimport", ()):  # before the fork, so both processes share the import
        try:
            __import__(module)
        except ImportError:
            pass
    source = read_solution()
    if config["mode"] == "judge":
        judge(source, config)
    drop_privileges(config["uids"][1], shield=False)
    if config.get("landlock"):
        landlock(config["landlock"])
    run_program(source)


if __name__ == "__main__":  # run as `python -c <this source>` inside the sandbox; importing it runs nothing
    main()
