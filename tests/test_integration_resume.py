"""Kill the driver mid-run, run the same command again: it resumes from the last checkpoint,
loses at most the step in flight, and finishes the same step sequence."""

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


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, ray_local, tiny_model_path, caplog):
    overrides = [
        "model.path=tiny-random", f"run.output_dir={tmp_path}", "run.name=killed",
        "grpo.steps=4", "grpo.checkpoint_every=1", "grpo.prompts_per_step=2", "grpo.samples_per_prompt=4",
        "grpo.max_tokens=16", "eval.num_problems=4", "eval.pass_k=1", "engine.kv_cache_gib=0.25",
    ]
    run = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "posttrain.cli", "run", str(QUICKSTART), *overrides],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not (run / "checkpoints" / "step_2" / "trainer_state.pt").exists():
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
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
