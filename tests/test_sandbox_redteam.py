"""Red-team programs against the sandbox's isolation, at every level this machine has.

Each program succeeds only if its attack worked; the host then checks the attack left no
trace. A level that does not claim a property (``GUARANTEES``, docs/sandbox.md) is
skipped for it, loudly, never silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from rewards.sandbox import LEVELS, SandboxLimits, available_isolations, run_python
from rewards.sandbox_levels import GUARANTEES, find_tool

QUICK = SandboxLimits(timeout_s=3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=LEVELS)
def level(request):
    if request.param not in available_isolations():
        pytest.skip(f"SKIPPED LOUDLY: sandbox level {request.param} is unavailable on this machine")
    return request.param


def _claims(level: str, claim: str) -> None:
    if claim not in GUARANTEES[level]:
        pytest.skip(f"SKIPPED LOUDLY: level {level} does not guarantee {claim} (docs/sandbox.md)")


def _attempts(program_lines: str) -> str:
    """A program that records each attempt's success and passes only if one succeeded."""
    return "import os, socket\nworked = []\n" + program_lines + "\nprint('worked', worked)\nassert worked\n"


def test_temp_writes_leave_nothing_on_the_host(level):
    _claims(level, "private_temp")
    name = f"posttrain-redteam-{os.getpid()}-{time.time_ns()}"
    dirs = ["/tmp", "/var/tmp", "/dev/shm"]
    program = _attempts(
        f"for d in {dirs!r}:\n"
        "    try:\n"
        f"        with open(os.path.join(d, {name!r}), 'wb') as f:\n"
        "            f.write(b'x' * (8 << 20))\n"
        "        worked.append(d)\n"
        "    except OSError as error:\n        print(d, error)\n"
    )
    try:
        result = run_python(program, QUICK, isolation=level)
        assert result.status in ("passed", "failed"), result.stderr  # writing privately is allowed...
        assert not [d for d in dirs if os.path.exists(os.path.join(d, name))]  # ...landing on the host is not
    finally:
        for d in dirs:
            if os.path.exists(os.path.join(d, name)):
                os.unlink(os.path.join(d, name))


def test_temp_space_is_size_capped(level):
    _claims(level, "capped_temp")
    limits = SandboxLimits(timeout_s=5, tmpfs_mb=32)
    name = f"posttrain-redteam-blob-{os.getpid()}-{time.time_ns()}"
    program = (
        "for i in range(8):\n"
        f"    with open(f'/tmp/{name}{{i}}', 'wb') as f:\n"
        "        f.write(b'x' * (15 << 20))\n"
    )
    try:
        result = run_python(program, limits, isolation=level)
        assert result.status == "failed" and "No space left" in result.stderr, (result.status, result.stderr[-300:])
    finally:
        for i in range(8):
            if os.path.exists(f"/tmp/{name}{i}"):
                os.unlink(f"/tmp/{name}{i}")


def test_files_in_world_writable_host_dirs_cannot_be_replaced(level):
    _claims(level, "host_writes_blocked")
    shared = tempfile.mkdtemp(prefix="posttrain-redteam-shared-", dir="/tmp")  # like Ray's session dirs
    try:
        os.chmod(shared, 0o777)
        target = os.path.join(shared, "session.json")
        with open(target, "w") as handle:
            handle.write("original")
        os.chmod(target, 0o666)
        program = _attempts(
            f"target = {target!r}\n"
            "for attempt in ('replace', 'overwrite', 'create'):\n"
            "    try:\n"
            "        if attempt == 'replace':\n"
            "            open(target + '.new', 'w').write('pwned'); os.replace(target + '.new', target)\n"
            "        elif attempt == 'overwrite':\n"
            "            open(target, 'w').write('pwned')\n"
            "        else:\n"
            "            open(os.path.join(os.path.dirname(target), 'dropped'), 'w').write('pwned')\n"
            "        worked.append(attempt)\n"
            "    except OSError as error:\n        print(attempt, error)\n"
        )
        result = run_python(program, QUICK, isolation=level)
        assert result.status == "failed", (result.status, result.stdout)
        assert open(target).read() == "original"
        assert sorted(os.listdir(shared)) == ["session.json"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_checkout_and_home_are_unreadable(level):
    _claims(level, "host_files_hidden")
    readme = os.path.join(REPO, "README.md")
    secret = tempfile.NamedTemporaryFile("w", prefix="posttrain-redteam-run-", dir="/tmp", delete=False)
    secret.write("run-dir secret")
    secret.close()
    os.chmod(secret.name, 0o644)  # world-readable, as run dirs and shared data usually are
    try:
        program = _attempts(
            f"for path in [{readme!r}, {secret.name!r}, '/etc/passwd']:\n"
            "    try:\n        open(path).read(64)\n        worked.append(path)\n"
            "    except OSError as error:\n        print(path, error)\n"
            f"prefix = {os.path.realpath(sys.base_prefix)!r}\n"  # its ancestors are visible, only as the path to it
            f"for d in [{REPO!r}, '/work', '/home', '/root']:\n"
            "    try:\n"
            "        if [e for e in os.listdir(d) if not prefix.startswith(os.path.join(d, e) + '/')]: worked.append(d)\n"
            "    except OSError as error:\n        print(d, error)\n"
        )
        result = run_python(program, QUICK, isolation=level)
        assert result.status == "failed", (result.status, result.stdout)
        assert "run-dir secret" not in result.stdout
    finally:
        os.unlink(secret.name)


def test_local_tcp_service_is_unreachable(level):
    _claims(level, "no_network")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    try:
        port = server.getsockname()[1]
        program = _attempts(
            f"for address in [('127.0.0.1', {port}), ('::1', {port})]:\n"
            "    try:\n        socket.create_connection(address, timeout=0.5).close(); worked.append(address)\n"
            "    except OSError as error:\n        print(address, error)\n"
        )
        result = run_python(program, QUICK, isolation=level)
        assert result.status == "failed", (result.status, result.stdout)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_local_udp_service_is_unreachable(level):
    _claims(level, "no_udp")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    try:
        port = server.getsockname()[1]
        program = _attempts(
            "try:\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'hello', ('127.0.0.1', {port})); worked.append('udp')\n"
            "except OSError as error:\n    print(error)\n"
        )
        run_python(program, QUICK, isolation=level)
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            server.recvfrom(64)
    finally:
        server.close()


def test_other_processes_command_lines_are_hidden(level):
    _claims(level, "own_processes_only")
    token = f"posttrain-redteam-token-{time.time_ns()}"
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", token])
    try:
        program = _attempts(
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n"
            "        text = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            f"        if {token.encode()!r} in text or b'pytest' in text: worked.append(pid)\n"
            "    except OSError:\n        pass\n"
        )
        result = run_python(program, QUICK, isolation=level)
        assert result.status == "failed", (result.status, result.stdout)
        assert token not in result.stdout
    finally:
        neighbour.kill()
        neighbour.wait()


def test_bwrap_is_found_on_the_callers_path(tmp_path, monkeypatch):
    """The probe used to look for bwrap with the sandbox's scrubbed PATH only: one in a venv or
    ~/.local/bin was skipped silently. Tools resolve with the caller's PATH, to an absolute path."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    find_tool.cache_clear()
    try:
        assert find_tool("bwrap") == str(fake)
    finally:
        find_tool.cache_clear()
