"""Recipes that must not validate: each goes through the real CLI (``posttrain check`` / ``run``) and
must exit 2 with one bounded error naming the field, never a traceback, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"model": {"path": "tiny-random"}, "task": {"sources": [{"kind": "arithmetic"}]}}
MAX_MESSAGE = 1500  # characters: a few problem lines, whatever the input held
HUGE = "x" * 200_000

# Billion laughs: 9 aliases per level, 7 levels -> 9**7 (4.8 million) strings once expanded.
LAUGHS = "\n".join(
    ["model: {path: tiny-random}", "task: {sources: [{kind: arithmetic}]}", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 7)]
) + "\n"

# (case id, recipe text, overrides, text the message must contain: the field path)
FILE_CASES = [
    ("duplicate-mode", "model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\nmodes:\n"
     "  fast: {max_tokens: 64}\n  fast: {max_tokens: 96}\n", [], "modes.fast"),
    ("duplicate-section", "model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\n"
     "grpo: {steps: 5}\ngrpo: {steps: 50}\n", [], "grpo"),
    ("recursive-alias", "model: {path: tiny-random}\ntask: {sources: &s [*s]}\n", [], "task.sources"),
    ("deep-nesting", "model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\nextra: "
     + "[" * 2000 + "]" * 2000 + "\n", [], "line 3"),
    ("nul-in-output-dir", yaml.safe_dump(MINIMAL) + "run: {output_dir: \"ru\\0ns\"}\n", [], "run.output_dir"),
    ("oversize-file", yaml.safe_dump(MINIMAL) + ("# padding\n" * 30_000), [], "KiB"),
    ("huge-extra-value-echoed", yaml.safe_dump({**MINIMAL, "grpo": {"stepz": HUGE}}), [], "grpo.stepz"),
    ("nan-reward-weight", yaml.safe_dump(MINIMAL), ["task.rewards=[{name: math_verify, weight: .nan}]"], "task.rewards.0.weight"),
    ("overflow-lr", yaml.safe_dump(MINIMAL), ["trainer.lr=1e999"], "trainer.lr"),
    ("inf-temperature", yaml.safe_dump(MINIMAL), ["grpo.temperature=.inf"], "grpo.temperature"),
    ("inf-clip-high", yaml.safe_dump(MINIMAL), ["grpo.clip_high=.inf"], "grpo.clip_high"),
    ("inf-mode-weight", yaml.safe_dump(MINIMAL), ["task.modes={default: .inf}"], "task.modes.default"),
    ("inf-reward-timeout", yaml.safe_dump(MINIMAL), ["task.rewards=[{name: math_verify, timeout_s: .inf}]"], "task.rewards.0.timeout_s"),
    ("nan-beta", yaml.safe_dump(MINIMAL), ["trainer.betas=[0.9, .nan]"], "trainer.betas.1"),
    ("negative-cpus", yaml.safe_dump(MINIMAL), ["engine.num_cpus=-1"], "engine.num_cpus"),
    ("negative-gpus", yaml.safe_dump(MINIMAL), ["trainer.num_gpus=-2"], "trainer.num_gpus"),
    ("negative-lora-alpha", yaml.safe_dump(MINIMAL), ["trainer.lora={r: 4, alpha: -3}"], "trainer.lora.alpha"),
    ("absurd-steps", yaml.safe_dump(MINIMAL), ["grpo.steps=1000000000000"], "grpo.steps"),
    ("absurd-batch", yaml.safe_dump(MINIMAL), ["grpo.prompts_per_step=1000000", "grpo.samples_per_prompt=1000000"], "grpo.prompts_per_step"),
    ("eval-tokens-past-context", yaml.safe_dump(MINIMAL), ["eval.max_tokens=4096"], "eval.max_tokens"),
    ("target-length-past-max-tokens", yaml.safe_dump(MINIMAL), ["modes={m: {max_tokens: 64, target_length: 500, length_coef: 0.1}}"], "modes.m"),
    ("run-name-escapes", yaml.safe_dump(MINIMAL), ["run.name=../../etc"], "run.name"),
    ("run-name-dotdot", yaml.safe_dump(MINIMAL), ["run.name=.."], "run.name"),
    ("override-into-scalar", yaml.safe_dump(MINIMAL), ["model.path.x=1"], "model.path"),
    ("override-bad-yaml", yaml.safe_dump(MINIMAL), ["trainer.lr=["], "trainer.lr"),
    ("override-duplicate-key", yaml.safe_dump(MINIMAL), ["trainer.lora={r: 4, r: 8}"], "trainer.lora"),
    ("override-long-int", yaml.safe_dump(MINIMAL), ["grpo.steps=" + "1" * 5000], "grpo.steps"),
    ("override-deep-key", yaml.safe_dump(MINIMAL), [".".join(["grpo"] * 3000) + "=1"], "grpo.grpo"),
    ("huge-reward-name-echoed", yaml.safe_dump(MINIMAL), ["task.rewards=[{name: " + HUGE + "}]"], "task.rewards.0.name"),
]


def _check(tmp_path, capsys, text: str | bytes, overrides: list[str], command: str = "check") -> str:
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main([command, str(path), *overrides]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "Traceback" not in message
    assert len(message) < MAX_MESSAGE, f"{len(message)} characters: {message[:300]}..."
    return message


@pytest.mark.parametrize("text,overrides,field", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_malformed_recipe_exits_2_naming_the_field(tmp_path, capsys, text, overrides, field):
    assert field in _check(tmp_path, capsys, text, overrides)


def test_undecodable_bytes_name_the_field_and_line(tmp_path, capsys):
    text = b"model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\nrun: {name: \"\xff\xfe\"}\n"
    message = _check(tmp_path, capsys, text, [])
    assert "run.name" in message and "line 3" in message and "UTF-8" in message


def test_billion_laughs_is_refused_within_a_second(tmp_path, capsys):
    started = time.perf_counter()
    message = _check(tmp_path, capsys, LAUGHS, [], command="run")  # `run`: refused before Ray starts
    assert time.perf_counter() - started < 1.0
    assert "expands to more than" in message and "a4 (line 7)" in message


def test_billion_laughs_in_an_override_is_refused(tmp_path, capsys):
    levels = ["a0: &a0 [" + ",".join(["lol"] * 9) + "]"]
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 7)]
    overrides = ["grpo.junk={" + ", ".join(levels) + "}"]
    message = _check(tmp_path, capsys, yaml.safe_dump(MINIMAL), overrides)
    assert "grpo.junk" in message and "expands to more than" in message


def test_duplicate_keys_report_both_lines(tmp_path, capsys):
    message = _check(tmp_path, capsys, FILE_CASES[0][1], [])
    assert "duplicate key 'fast'" in message and "line 5" in message and "line 4" in message


def test_yaml_merge_keys_still_work(tmp_path):
    """An explicit key beside a `<<` merge is YAML's override, not a duplicate key."""
    from posttrain.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(
        "model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\n"
        "modes:\n  slow: &base {max_tokens: 64}\n  fast: {<<: *base, max_tokens: 96}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.modes["slow"].max_tokens == 64 and recipe.modes["fast"].max_tokens == 96


def test_the_console_entry_point_exits_2_without_a_traceback(tmp_path):
    """One subprocess (the interpreter's imports take seconds): `posttrain run` on an alias bomb."""
    path = tmp_path / "r.yaml"
    path.write_text(LAUGHS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(path)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and len(done.stderr) < MAX_MESSAGE
