"""The whole pipeline -- specialists, teachers, distillation, eval -- submitted with
``ray job submit`` to a two-node Ray cluster started on this machine with ``ray start``.
One specialist is a GRPO run on 2 trainer ranks and 2 engines; distillation uses 2 teacher replicas.

The cluster's processes live in their own session, so stopping it kills exactly
them (``ray stop`` would stop every Ray instance on the machine).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a worker node (2 logical CPUs each); yields the job server's address, the env, the head's temp dir."""
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # token auth would need the token shared by every node and CLI call
    # The dashboard agent's HTTP port on a free one: the default (52365) is taken by any other Ray on the
    # machine (the test session's own local cluster, a second node), and an agent that cannot bind it stays
    # up without its job server, so `ray job submit` answers "No available agent" forever.
    common = ["--num-cpus=2", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
              "--dashboard-agent-listen-port=0"]
    # Each node its own (short: socket paths) temp dir, as on separate machines: nodes sharing one would
    # share runtime_resources/, and one node's cleanup would delete the job's working directory under the other.
    head_tmp, node_tmp = (tempfile.mkdtemp(prefix=f"/tmp/pt{name}") for name in ("h", "n"))
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--temp-dir={head_tmp}", f"--port={gcs_port}", "--include-dashboard=true",
         f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", *common],
        env=env, start_new_session=True, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
    )
    nodes = [head]
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        _wait_for(lambda: _cli(["status", f"--address=127.0.0.1:{gcs_port}"], env).returncode == 0, 120, "head")
        nodes.append(subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={node_tmp}", *common],
            env=env, start_new_session=True, stdout=open(tmp_path / "node.log", "w"), stderr=subprocess.STDOUT,
        ))
        _wait_for(lambda: _alive_nodes(gcs_port, env) == 2, 120, "second node")
        _wait_for(lambda: _cli(["job", "list", f"--address={address}"], env).returncode == 0, 120, "job server")
        yield address, env, head_tmp
    finally:
        for process in reversed(nodes):
            _stop(process)
        for temp in (head_tmp, node_tmp):
            shutil.rmtree(temp, ignore_errors=True)


def _agent_log_tail(head_tmp: str) -> str:
    logs = Path(head_tmp).glob("session_latest/logs/dashboard_agent.log")
    return "".join(f"\n--- {log}\n" + log.read_text()[-2000:] for log in logs)


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=120)


def _job_status(address: str, job_id: str, env: dict) -> str:
    """The job's status word, from `ray job status` (its output may carry ANSI colours)."""
    result = _cli(["job", "status", f"--address={address}", job_id], env)
    found = re.search(r"Job '[^']*' (succeeded|failed|stopped)", result.stdout + result.stderr)
    return found.group(1).upper() if found else "RUNNING"


def _alive_nodes(gcs_port: int, env: dict) -> int:
    script = f"import ray; ray.init(address='127.0.0.1:{gcs_port}'); print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else 0


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"{what} not up within {seconds} s"
        time.sleep(2)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_pipeline_runs_every_stage_through_ray_job_submit_on_two_nodes(two_node_cluster, tmp_path, tiny_model_path):
    address, env, head_tmp = two_node_cluster
    output = tmp_path / "runs"
    submit = [
        "job", "submit", f"--address={address}", "--working-dir", str(REPO), "--no-wait", "--",
        sys.executable, "-m", "posttrain.cli", "run", "tests/recipes/tiny_pipeline.yaml", f"run.output_dir={output}",
    ]
    for _ in range(30):  # the job server answers before the head's job agent is up: "No available agent"
        submitted = _cli(submit, env)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-2000:] + _agent_log_tail(head_tmp)
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr).group(0)
    deadline = time.time() + 900
    while (status := _job_status(address, job_id, env)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, "the pipeline job did not finish within 15 minutes"
        time.sleep(15)  # each `ray job status` costs ~1 CPU-second, taken from the job on a 2-core machine
    logs = _cli(["job", "logs", f"--address={address}", job_id], env).stdout
    assert status == "SUCCEEDED", logs[-4000:]

    ledger = json.loads((output / "tiny_pipeline" / "pipeline.json").read_text())
    stages = ["specialist-add", "specialist-sub", "teachers", "distill", "eval"]
    assert [name for name in stages if ledger[name]["status"] == "done"] == stages
    nodes = {ledger[f"specialist-{name}"]["outputs"]["node"] for name in ("add", "sub")}
    assert len(nodes) == 2, "the two specialists (2 CPUs each) should run side by side, one per node"
    assert ledger["teachers"]["outputs"]["teachers"] == 4
    table = ledger["eval"]["outputs"]["table"]
    assert {(row["domain"], row["mode"]) for row in table} == {(d, m) for d in ("add", "sub") for m in ("non_think", "high")}
    assert all(row["specialist"] is not None and row["student"] is not None for row in table)
    assert "stage eval" in logs
    add = output / "tiny_pipeline" / "stages" / "specialist-add"  # GRPO on 2 trainer ranks and 2 engines
    assert "trainer group: 2 FSDP2 ranks (gloo)" in logs and "2 engine replicas" in logs
    assert (add / "checkpoints" / "step_2" / "dcp" / ".metadata").exists()  # the ranks wrote their shards
    assert (add / "teacher" / "adapter_config.json").exists()  # read back whole for the teachers: an adapter
    assert "1 shard(s) x 2 replica(s)" in logs
