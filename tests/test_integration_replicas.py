"""``engine.replicas: 2`` on the real path: two vLLM CPU engines in Ray actors behind an ``EnginePool``,
against one of them alone. Same seeds, same token ids; a multi-turn episode never changes engine.

SmolLM2-135M-Instruct in float32 (bfloat16 rounding that differs with batch shapes could flip a
near-tie between two tokens; in float32 it does not here). Not the tiny random model: under the
call grammar it writes whitespace until ``max_tokens``, so its episodes never reach a second turn.
"""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import ray

from posttrain.core.chat import prompt_ids
from posttrain.core.group import stop_trainer
from rollout.engine import EngineClient, EngineConfig, SamplingSpec, engine_actor
from rollout.engine_pool import EnginePool, engine_client
from rollout.environments import Environment
from rollout.multiturn import MultiTurnConfig, multiturn_rollout
from rollout.seeds import sampling_seed
from rollout.tools import tool

pytestmark = pytest.mark.integration
QUESTIONS = ("What is 2 + 3?", "Name a colour.", "Say hello.", "Count to three.", "Echo the number 7.")


@pytest.fixture(scope="module")
def engines(smollm2_path, ray_local):
    config = EngineConfig(model=smollm2_path, dtype="float32", max_model_len=256, kv_cache_gib=0.25)
    actors = [engine_actor(config, num_cpus=0.5) for _ in range(2)]  # a CPU left for the trainer below
    ray.get([actor.ready.remote() for actor in actors])
    yield actors
    for actor in actors:
        ray.kill(actor)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def test_two_replicas_sample_the_token_ids_one_engine_samples(engines, tokenizer):
    prompts = [prompt_ids(tokenizer, question) for question in QUESTIONS]
    plain = SamplingSpec(n=2, temperature=1.0, max_tokens=12)
    thinking = SamplingSpec(n=2, temperature=1.0, max_tokens=16, thinking_budget=6)  # two-phase budget forcing
    specs = [plain, plain, thinking, plain, thinking]
    seed = sampling_seed(3, 1)
    ray.get(engines[0].reseed.remote(seed))
    alone = ray.get(engines[0].generate.remote(prompts, specs)).completions
    pool = EnginePool(engines)
    ray.get(pool.reseed.remote(seed))
    spread = ray.get(pool.generate.remote(prompts, specs)).completions
    assert all(pool.route(prompts, pool.keyed_specs(prompts, specs))), "both replicas take part of the call"
    assert [c.prompt_index for c in spread] == [c.prompt_index for c in alone] == [i for i in range(5) for _ in "ab"]
    assert [c.token_ids for c in spread] == [c.token_ids for c in alone]
    assert [(c.forced_close, c.thinking_tokens, c.loss_mask) for c in spread] == [
        (c.forced_close, c.thinking_tokens, c.loss_mask) for c in alone]
    assert any(c.forced_close for c in alone), "a thinking sample was cut at its budget"
    gaps = [abs(a - b) for x, y in zip(spread, alone) for a, b in zip(x.logprobs, y.logprobs)]
    assert max(gaps) < 1e-4, max(gaps)
    ray.get(pool.reseed.remote(seed + 1))
    assert [c.token_ids for c in ray.get(pool.generate.remote(prompts, specs)).completions] != [c.token_ids for c in alone]


class Echo(Environment):
    """One tool; the first turn must call it (vLLM structured outputs), so every episode has a second turn."""

    name = "echo"
    tool_choice = "required"
    max_turns = 3

    @tool
    def echo(self, x: int) -> int:
        """Return the number.

        Args:
            x: a number
        """
        return x

    def outcome(self, final_answer: str) -> float:
        return 0.0


class Recording:
    """An engine actor handle that records every turn prompt submitted to it (what the engine itself got)."""

    def __init__(self, actor):
        self.actor, self.prompts = actor, []

    def __getattr__(self, name):
        return getattr(self.actor, name)

    @property
    def submit(self):
        def remote(prompts, specs):
            self.prompts += prompts
            return self.actor.submit.remote(prompts, specs)

        return SimpleNamespace(remote=remote)


def test_a_multi_turn_episode_never_changes_engine_and_samples_what_one_engine_samples(engines, tokenizer):
    prompts = [prompt_ids(tokenizer, question) for question in QUESTIONS[:3]]
    specs = [SamplingSpec(n=2, temperature=1.0, max_tokens=80)] * len(prompts)
    config = MultiTurnConfig(max_turns=2, max_context=256)
    seed = sampling_seed(5, 2)
    ray.get(engines[0].reseed.remote(seed))
    alone = multiturn_rollout(EngineClient(engines[0]), tokenizer, prompts, specs, lambda _: Echo(), config).completions
    recorded = [Recording(actor) for actor in engines]
    pool = EnginePool(recorded)
    ray.get(pool.reseed.remote(seed))
    client = engine_client(pool)
    spread = multiturn_rollout(client, tokenizer, prompts, specs, lambda _: Echo(), config).completions
    assert [t.token_ids for t in spread] == [t.token_ids for t in alone]
    assert [t.loss_mask for t in spread] == [t.loss_mask for t in alone]
    assert sum(t.turns >= 2 for t in spread) >= 4, [t.turns for t in spread]  # the forced call, then its result
    for episode, trajectory in enumerate(spread):
        first = prompts[episode // 2]
        whole = first + trajectory.token_ids
        engines_of_turns = {r for r, rec in enumerate(recorded) for turn in rec.prompts if whole[: len(turn)] == turn}
        assert len(engines_of_turns) == 1, f"episode {episode} ran on engines {engines_of_turns}"
    assert all(rec.prompts for rec in recorded), "both engines served episodes"
    assert len(client.served) == sum(t.turns for t in spread)


def test_prompts_overflowing_a_steps_token_budget_sample_seeded_and_alike_alone(engines):
    """Fails before: with chunked prefill a prompt that did not fit a step was split, and vLLM's rollback of
    its seeded generator raised "CPU Generator does not use offset"."""
    import random

    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(220)] for _ in range(20)]  # 4400 tokens > 4096 per step
    spec = SamplingSpec(n=1, temperature=1.0, max_tokens=3)
    ray.get(engines[1].reseed.remote(11))
    together = ray.get(engines[1].generate.remote(prompts, spec)).completions
    ray.get(engines[1].reseed.remote(11))
    last = ray.get(engines[1].generate.remote(prompts[-1:], replace(spec, seed_key=(0, 19)))).completions
    assert last[0].token_ids == together[-1].token_ids


def test_a_weight_sync_reaches_both_replicas_streamed_and_whole(engines, tokenizer, smollm2_path):
    from posttrain.core.driver import Actors
    from posttrain.core.policy import Sequences, trainer_actor
    from posttrain.core.schema import TrainerConfig
    from specialists.grpo import GrpoLoss, LossNormalizer

    prompts = [prompt_ids(tokenizer, question) for question in QUESTIONS[:3]]
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=8)

    def outputs():
        return [[c.token_ids for c in ray.get(e.generate.remote(prompts, greedy)).completions] for e in engines]

    before = outputs()
    trainer = trainer_actor(smollm2_path, TrainerConfig(lr=1e-3, micro_batch_size=4, weight_bucket_mb=16))
    base = trainer.engine_weights.remote("float32")
    loss = GrpoLoss(LossNormalizer("token_mean", 12, 3, 4))
    ray.get(trainer.update.remote(Sequences(prompts, [[28, 28, 28, 2]] * 3), loss, {"advantages": [1.0] * 3}))
    Actors(EnginePool(engines), trainer, None).sync_weights("float32")  # several buckets, each to both engines
    after = outputs()
    assert after[0] == after[1] != before[0], "both replicas hold the pushed weights"
    ray.get(EnginePool(engines).update_weights.remote(base))  # the whole dict, as across nodes
    assert outputs() == before
    stop_trainer(trainer)  # as the driver stops it: its shared weight file goes too
