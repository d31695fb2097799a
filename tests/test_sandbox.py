"""Adversarial programs in the code sandbox, at every isolation level this machine has.

Each attack is written as a candidate solution whose last line passes only if the
attack worked; the sandbox must contain it (not ``passed``), end every process it
started, and leave this process, its listener and its environment as they were.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from rewards.sandbox import (
    LEVELS,
    SandboxLimits,
    available_isolations,
    run_python,
    sandbox_isolation,
)
from rewards.sandbox_levels import GUARANTEES

QUICK = SandboxLimits(timeout_s=1.5)
SECRET_NAME = "POSTTRAIN_TEST_SECRET"


@pytest.fixture(params=LEVELS)
def level(request):
    if request.param not in available_isolations():
        pytest.skip(f"SKIPPED LOUDLY: sandbox level {request.param} is unavailable here")
    return request.param


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _sandbox_processes() -> list[int]:
    """Processes still running our bootstrap (argv holds its source)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    if b"def enter_minimal_root" in handle.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _contained(result, *allowed: str) -> None:
    assert result.status in allowed, (result.status, result.stdout, result.stderr)
    deadline = time.monotonic() + 2
    while _sandbox_processes() and time.monotonic() < deadline:  # pid-namespace teardown is asynchronous
        time.sleep(0.05)
    assert _sandbox_processes() == [], "sandbox processes outlived their run"


def test_detected_level_is_strongest_available():
    assert sandbox_isolation() == available_isolations()[0]
    assert "rlimits" in available_isolations()


def test_passing_failing_and_output(level):
    ok = run_python("print('hello')\nassert sum([1, 2]) == 3", QUICK, isolation=level)
    assert ok.status == "passed" and ok.stdout.strip() == "hello" and ok.isolation == level
    bad = run_python("assert 1 + 1 == 3, 'arith'", QUICK, isolation=level)
    assert bad.status == "failed" and "AssertionError: arith" in bad.stderr


def test_exiting_early_does_not_pass(level):
    for early in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"):
        result = run_python(f"{early}\nassert False", QUICK, isolation=level)
        assert result.status == "failed", early


def test_infinite_loop_times_out(level):
    start = time.monotonic()
    result = run_python("while True:\n    pass", QUICK, isolation=level)
    assert result.status == "timeout"
    assert time.monotonic() - start < QUICK.timeout_s + 1.5
    _contained(result, "timeout")


def test_fork_bomb_is_capped_and_reaped(level):
    program = (
        "import os, time\nforks = 0\n"
        "for _ in range(2000):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        continue\n"
        "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
        "    forks += 1\n"
        "print('forks', forks)\nassert forks >= 2000\n"
    )
    result = run_python(program, QUICK, isolation=level)
    _contained(result, "failed", "timeout")
    if result.status == "failed":
        assert int(result.stdout.split()[-1]) < QUICK.max_processes


def test_memory_bomb_fails(level):
    small = SandboxLimits(timeout_s=5, memory_mb=160)  # touching less memory keeps the test quick
    for program in ("huge = bytearray(8 * 1024 ** 3)", "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 ** 2))"):
        result = run_python(program, small, isolation=level)
        _contained(result, "failed")
        assert "MemoryError" in result.stderr


def test_network_is_unreachable(level, listener):
    if "no_network" not in GUARANTEES[level]:
        pytest.skip(f"SKIPPED LOUDLY: the {level} level does not block the network (docs/sandbox.md)")
    port = listener.getsockname()[1]
    program = (
        "import socket\nreached = []\n"
        f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
        "    try:\n        socket.create_connection(address, timeout=0.5).close()\n        reached.append(address)\n"
        "    except OSError as error:\n        print(address, error)\n"
        "assert reached, 'no network'\n"
    )
    result = run_python(program, QUICK, isolation=level)
    _contained(result, "failed")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected to our listener


def test_writes_outside_its_dir_do_not_land(level, tmp_path):
    if level == "rlimits" and os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: the rlimits level as a normal user writes wherever you can (docs/sandbox.md)")
    os.chmod(tmp_path, 0o700)
    targets = [tmp_path / "escaped.txt", os.path.join(os.path.dirname(__file__), "escaped.txt")]
    program = (
        "written = 0\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n        open(path, 'w').write('pwned')\n        written += 1\n"
        "    except OSError as error:\n        print(error)\n"
        "assert written\n"
    )
    result = run_python(program, QUICK, isolation=level)
    _contained(result, "failed")
    assert not any(os.path.exists(t) for t in targets)


def test_parent_environment_secrets_are_invisible(level, monkeypatch):
    secret = f"s3cr3t-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv(SECRET_NAME, secret)
    program = (
        "import os\nfound = [value for key, value in os.environ.items() if 'SECRET' in key]\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        f"        text = open(f'/proc/{{pid}}/environ', 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n        continue\n"
        f"    found += [item for item in text.split(chr(0)) if item.startswith('{SECRET_NAME}=')]\n"
        "print(found)\nassert found\n"
    )
    result = run_python(program, QUICK, isolation=level)
    _contained(result, "failed")
    assert secret not in result.stdout + result.stderr
    assert os.environ[SECRET_NAME] == secret


def test_killing_the_parent_is_contained(level, listener):
    program = (
        "import os, signal, time\nparent = os.getppid()\n"
        "for attempt in (lambda: os.kill(parent, signal.SIGKILL), lambda: os.killpg(os.getpgid(parent), signal.SIGKILL),\n"
        "                lambda: os.kill(-1, signal.SIGKILL)):\n"
        "    try:\n        attempt()\n    except OSError as error:\n        print(error)\n"
        "time.sleep(0.2)\n"
        "try:\n    os.kill(parent, 0)\n    alive = True\nexcept ProcessLookupError:\n    alive = False\n"
        "except PermissionError:\n    alive = True\n"
        "assert not alive, 'the parent survived'\n"
    )
    result = run_python(program, QUICK, isolation=level)
    _contained(result, "failed", "killed")
    assert listener.getsockname()[0] == "127.0.0.1"  # still ours, still open
    assert run_python("print(1)", QUICK, isolation=level).status == "passed"  # and the sandbox still works
