"""Overlap of generation and training (grpo.max_staleness): the ahead queue, and the GRPO loop on it.

The loop runs with its real trainer (tiny random model) and fake engine / reward / Ray
handles that record the order of calls. ``max_staleness: 0`` must be the synchronous loop
call for call; with 1 the next step's rollout is asked for before this step's update, and
(since the fake engine's samples depend only on the step's seed, not on the weights) every
step trains on exactly the samples and metrics of the synchronous run.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import ray

from posttrain.core.overlap import RolloutsAhead
from posttrain.core.policy import PolicyTrainer
from posttrain.core.rundir import RunDir
from posttrain.core.tasks import make_task
from posttrain.recipe import validate_recipe
from rewards import ScoredBatch
from rollout.engine import Completion, GenerateResult
from specialists import loop as grpo_loop


def test_ahead_with_no_staleness_produces_on_the_callers_thread():
    calls = []
    ahead = RolloutsAhead(lambda step: calls.append((step, threading.current_thread())) or step, 0, 3)
    for step in range(3):
        taken = ahead.take(step)
        ahead.ahead(step)
        ahead.before_sync()
        ahead.synced()
        assert (taken.rollout, taken.staleness) == (step, 0)
    assert calls == [(step, threading.current_thread()) for step in range(3)]


@pytest.mark.parametrize("staleness", [1, 2])
def test_ahead_samples_later_steps_in_order_with_bounded_staleness(staleness):
    produced = []

    def produce(step):
        time.sleep(0.01)
        produced.append(step)
        return step

    ahead = RolloutsAhead(produce, staleness, 6)
    seen = []
    for step in range(2, 6):  # a resumed run starts at 2
        taken = ahead.take(step)
        ahead.ahead(step)
        ahead.before_sync()
        ahead.synced()
        seen.append((taken.rollout, taken.staleness))
    ahead.close()
    assert produced == [2, 3, 4, 5]
    assert [rollout for rollout, _ in seen] == [2, 3, 4, 5]
    expected = [min(index, staleness) for index in range(4)]
    assert [lag for _, lag in seen] == expected


# ---- the GRPO loop on fakes ------------------------------------------------------------------


class Handle:
    """A Ray actor handle stand-in: ``handle.method.remote(...)`` runs the method now (``ray.get`` is identity)."""

    def __init__(self, target, log):
        self._target, self._log = target, log

    def __getattr__(self, name):
        method = getattr(self._target, name)
        log = self._log

        class Remote:
            @staticmethod
            def remote(*args, **kwargs):
                log.append((name, threading.current_thread().name))
                return method(*args, **kwargs)

        return Remote


class FakeEngine:
    """Samples depend on the reseeded step seed only (never on the weights)."""

    def __init__(self):
        self.rng = random.Random(0)

    def reseed(self, seed):
        self.rng = random.Random(seed)

    def generate(self, prompts, specs):
        completions = []
        for index, spec in enumerate(specs):
            for _ in range(spec.n):
                tokens = [self.rng.randrange(3, 200) for _ in range(self.rng.randrange(2, 7))]
                logprobs = [-self.rng.random() for _ in tokens]
                completions.append(Completion(index, tokens, logprobs, f"answer {tokens[0] % 3}", truncated=False))
        return GenerateResult(completions, seconds=0.01)


class FakeActors:
    def __init__(self, trainer, tokenizer, log):
        self.engine = Handle(FakeEngine(), log)
        self.trainer = Handle(trainer, log)
        self.tokenizer = tokenizer
        self._log = log

    def sync_weights(self, dtype, full=False):
        self._log.append(("sync_weights", threading.current_thread().name))


def fake_scores(_rewards, samples):
    scores = [float(sample.completion.endswith("1")) for sample in samples]
    return ScoredBatch(scores=scores, per_reward={"fake": scores})


def run_loop_steps(tmp_path, tiny_model_path, monkeypatch, staleness: int):
    from transformers import AutoTokenizer

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    monkeypatch.setattr(grpo_loop, "score_batch", fake_scores)
    recipe = validate_recipe({
        "run": {"name": f"k{staleness}", "output_dir": str(tmp_path), "seed": 3},
        "model": {"path": "tiny-random"},
        "trainer": {"lr": 1e-3, "micro_batch_size": 4, "autocast": "none"},
        "task": {"domain": "math", "sources": [{"kind": "arithmetic", "max_operand": 9, "ops": "+", "terms": 2}]},
        "grpo": {"steps": 3, "prompts_per_step": 2, "samples_per_prompt": 3, "max_tokens": 8, "max_staleness": staleness},
    })
    log: list[str] = []
    trainer = PolicyTrainer(tiny_model_path, recipe.trainer, seed=0, threads=1)
    actors = FakeActors(trainer, AutoTokenizer.from_pretrained(tiny_model_path), log)
    loop = grpo_loop.GrpoLoop(recipe, actors, make_task(recipe.task, seed=recipe.run.seed), RunDir(tmp_path, f"k{staleness}"))
    metrics = [loop.step(step) for step in range(recipe.grpo.steps)]
    return metrics, [(name, thread) for name, thread in log if name in ("reseed", "generate", "update", "sync_weights")]


def _comparable(metrics):
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "async/", "rollout/tokens_per_s", "memory/"))} for m in metrics]


def test_staleness_zero_is_the_synchronous_loop_and_one_overlaps(tmp_path, tiny_model_path, monkeypatch):
    main = threading.current_thread().name
    sync_metrics, sync_calls = run_loop_steps(tmp_path, tiny_model_path, monkeypatch, 0)
    assert sync_calls == [(name, main) for name in ("reseed", "generate", "update", "sync_weights")] * 3
    assert not any(key.startswith("async/") for key in sync_metrics[0])

    async_metrics, async_calls = run_loop_steps(tmp_path, tiny_model_path, monkeypatch, 1)
    names = [name for name, _ in async_calls]
    # step 0 is sampled on the caller's thread; steps 1 and 2 ahead, each finished before the sync
    # that follows the update it overlapped; no generation straddles a sync
    assert async_calls[:2] == [("reseed", main), ("generate", main)]
    ahead_threads = {thread for name, thread in async_calls[2:] if name in ("reseed", "generate")}
    assert len(ahead_threads) == 1 and main not in ahead_threads
    syncs = [index for index, name in enumerate(names) if name == "sync_weights"]
    assert [names[:sync].count("generate") for sync in syncs] == [2, 3, 3]
    assert names.count("update") == 3
    assert [m["async/staleness"] for m in async_metrics] == [0.0, 1.0, 1.0]
    for ours, theirs in zip(_comparable(async_metrics), _comparable(sync_metrics)):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
