"""Kill the driver mid-run, run the same command again: it resumes from the last checkpoint,
loses at most the step in flight, and finishes the same step sequence. Kill an actor of the
run instead: the run ends with a clear error and its checkpoints intact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.cli import main

pytestmark = pytest.mark.integration
QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def tiny_run(tmp_path, name: str) -> list[str]:
    return [
        "model.path=tiny-random", f"run.output_dir={tmp_path}", f"run.name={name}",
        "grpo.steps=4", "grpo.checkpoint_every=1", "grpo.prompts_per_step=2", "grpo.samples_per_prompt=4",
        "grpo.max_tokens=16", "eval.num_problems=4", "eval.pass_k=1", "engine.kv_cache_gib=0.25",
    ]


def start_driver(ray_local, overrides: list[str], stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """``posttrain run`` in its own process (and process group), on the test's Ray instance."""
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    return subprocess.Popen(
        [sys.executable, "-m", "posttrain.cli", "run", str(QUICKSTART), *overrides],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr,
    )


def wait_for_checkpoint(driver: subprocess.Popen, checkpoint: Path) -> None:
    deadline = time.time() + 600
    while not (checkpoint / "trainer_state.pt").exists():
        assert driver.poll() is None, "the driver ended before it could be interrupted"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, ray_local, tiny_model_path, caplog):
    overrides = tiny_run(tmp_path, "killed")
    run = tmp_path / "killed"
    driver = start_driver(ray_local, overrides)
    wait_for_checkpoint(driver, run / "checkpoints" / "step_2")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not (run / "checkpoints" / "step_4").exists()

    caplog.set_level("INFO", logger="posttrain")
    assert main(["run", str(QUICKSTART), *overrides]) == 0
    assert any("continuing at step" in message for message in caplog.messages)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert (run / "checkpoints" / "step_4" / "trainer_state.pt").exists()
    assert (run / "eval" / "after.json").exists()


def test_a_dead_trainer_actor_ends_the_run_with_a_clear_error_and_intact_checkpoints(tmp_path, ray_local, tiny_model_path):
    import psutil
    import torch
    from safetensors.torch import load_file

    from posttrain.core.rundir import RunDir

    run = tmp_path / "crash"
    stderr_path = tmp_path / "driver.err"
    with open(stderr_path, "w") as stderr:
        driver = start_driver(ray_local, tiny_run(tmp_path, "crash"), stderr=stderr)
        wait_for_checkpoint(driver, run / "checkpoints" / "step_1")
        # the trainer actor's worker process is a descendant of this test's raylet (as an OOM kill would hit it)
        trainers = [p for p in psutil.Process().children(recursive=True) if "ray::PolicyTrainer" in " ".join(p.cmdline())]
        assert len(trainers) == 1, [p.cmdline() for p in trainers]
        trainers[0].kill()
        returncode = driver.wait(timeout=300)
    message = stderr_path.read_text()
    assert returncode == 1, message[-3000:]
    assert "a Ray actor of this run died" in message
    assert "Re-run the same command to resume" in message
    assert "Traceback" not in message.split("a Ray actor of this run died")[1]
    step, checkpoint = RunDir(tmp_path, "crash").latest_checkpoint()
    assert step >= 1 and f"{checkpoint}, is intact" in message
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    assert all(load_file(weights) for weights in checkpoint.glob("*.safetensors"))


def _per_step(run: Path) -> list[float]:
    keys = ("step", "reward/mean", "response/length_mean", "loss/policy", "mismatch/mean_abs_logp_diff")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows for key in keys]


def test_a_killed_and_resumed_run_replays_the_uninterrupted_one(tmp_path, ray_local, tiny_model_path):
    """Fails before: the engine was seeded once at start, so the resumed steps sampled other completions."""
    quiet = [
        "eval.before=false", "eval.after=false", "grpo.temperature=0.8",
        "task.rewards=[{name: 'tests.resume_reward:vowel_share'}]",  # graded, so advantages and losses are not 0
    ]
    assert main(["run", str(QUICKSTART), *tiny_run(tmp_path, "straight"), *quiet]) == 0
    driver = start_driver(ray_local, [*tiny_run(tmp_path, "resumed"), *quiet])
    wait_for_checkpoint(driver, tmp_path / "resumed" / "checkpoints" / "step_2")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert main(["run", str(QUICKSTART), *tiny_run(tmp_path, "resumed"), *quiet]) == 0
    straight, resumed = _per_step(tmp_path / "straight"), _per_step(tmp_path / "resumed")
    assert resumed[::5] == [0, 1, 2, 3]
    assert resumed == pytest.approx(straight, rel=1e-5, abs=1e-6)
