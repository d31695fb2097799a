"""The engine side of the learning signal, on the real vLLM engine (tiny model, fp32 weights so the
engine and the trainer compute the same policy): the log-probs vLLM returns are those of the
distribution it sampled from, and a step's samples are a function of the step's seed."""

import pytest

from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import TrainerConfig
from rollout.engine import EngineConfig, RolloutEngine, SamplingSpec

pytestmark = pytest.mark.integration
PROMPTS = [[1, 5, 9, 11], [1, 7, 8]]
SPEC = SamplingSpec(n=4, temperature=0.8, max_tokens=12)


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return RolloutEngine(EngineConfig(model=tiny_model_path, dtype="float32", max_model_len=256, kv_cache_gib=0.25))


def test_engine_logprobs_are_the_trainers_at_the_sampling_temperature(engine, tiny_model_path):
    """Fails before: vLLM returned raw (T=1) log-probs, 0.05 nats/token off the sampling distribution."""
    completions = engine.generate(PROMPTS, SPEC).completions
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(autocast="none"), threads=2)
    seqs = Sequences([PROMPTS[c.prompt_index] for c in completions], [c.token_ids for c in completions], temperature=0.8)
    gaps = [abs(a - b) for row, c in zip(trainer.logprobs(seqs), completions) for a, b in zip(row, c.logprobs)]
    assert max(gaps) < 1e-4, max(gaps)


def test_a_reseeded_step_samples_the_same_completions(engine):
    """Fails before: no reseed; the engine's stream went on from wherever the last call left it."""
    engine.reseed(123)
    first = [c.token_ids for c in engine.generate(PROMPTS, SPEC).completions]
    engine.generate(PROMPTS, SPEC)  # the stream moves on (as a resumed run's history differs)
    engine.reseed(123)
    assert [c.token_ids for c in engine.generate(PROMPTS, SPEC).completions] == first
