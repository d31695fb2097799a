"""The real vLLM engine in a real Ray actor, fed by the real trainer actor."""

import pytest
import ray
import torch

from posttrain.core.chat import prompt_ids
from posttrain.core.group import stop_trainer
from posttrain.core.policy import Sequences, trainer_actor
from posttrain.core.schema import TrainerConfig
from rollout.engine import EngineConfig, SamplingSpec, engine_actor
from specialists.grpo import GrpoLoss, LossNormalizer

pytestmark = pytest.mark.integration
GREEDY = SamplingSpec(n=1, temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def engine(smollm2_path, ray_local):
    actor = engine_actor(EngineConfig(model=smollm2_path, max_model_len=512, kv_cache_gib=0.5))
    ray.get(actor.ready.remote())
    yield actor
    ray.kill(actor)


@pytest.fixture(scope="module")
def prompts(smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    return [prompt_ids(tokenizer, q) for q in ("What is 2 + 3?", "Name a colour.", "Say hello.")]


def _texts(engine, prompts):
    return [c.text for c in ray.get(engine.generate.remote(prompts, GREEDY)).completions]


def test_generate_returns_tokens_logprobs_and_groups(engine, prompts):
    result = ray.get(engine.generate.remote(prompts, SamplingSpec(n=3, max_tokens=16)))
    assert [c.prompt_index for c in result.completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for completion in result.completions:
        assert 0 < len(completion.token_ids) <= 16
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(lp <= 0.0 for lp in completion.logprobs)
        assert completion.truncated == (len(completion.token_ids) == 16)


def test_weight_push_changes_output_and_pushing_back_restores_it(engine, prompts, smollm2_path):
    original = _texts(engine, prompts)
    trainer = trainer_actor(smollm2_path, TrainerConfig(lr=1e-3, micro_batch_size=4))
    original_weights = ray.get(trainer.engine_weights.remote())
    # One big-LR update that pushes up the log-prob of an odd completion.
    seqs = Sequences(prompts, [[28, 28, 28, 2]] * len(prompts))
    loss = GrpoLoss(LossNormalizer("token_mean", 12, 3, 4))
    ray.get(trainer.update.remote(seqs, loss, {"advantages": [1.0] * len(prompts)}))
    seconds = ray.get(engine.update_weights.remote(trainer.engine_weights.remote()))
    changed = _texts(engine, prompts)
    assert changed != original, "the engine did not pick up the pushed weights"
    assert seconds < 30
    ray.get(engine.update_weights.remote(original_weights))
    assert _texts(engine, prompts) == original, "pushing the original weights back did not restore the output"
    stop_trainer(trainer)  # as the driver stops it: its shared weight file goes too


def test_streamed_bucket_sync_equals_the_whole_push_and_lora_sends_only_what_changed(engine, prompts, smollm2_path):
    from posttrain.core.driver import Actors
    from posttrain.core.schema import LoraConfig

    original = _texts(engine, prompts)
    seqs = Sequences(prompts, [[28, 28, 28, 2]] * len(prompts))
    loss = GrpoLoss(LossNormalizer("token_mean", 12, 3, 4))
    for lora in (None, LoraConfig(r=4, alpha=64, target_modules=["q_proj", "v_proj"])):
        trainer = trainer_actor(smollm2_path, TrainerConfig(lr=1e-2 if lora else 1e-3, micro_batch_size=4, lora=lora, weight_bucket_mb=16))
        ray.get(trainer.update.remote(seqs, loss, {"advantages": [1.0] * len(prompts)}))
        Actors(engine, trainer, None).sync_weights("bfloat16")  # several buckets; with LoRA the attention blocks only
        streamed = _texts(engine, prompts)
        assert streamed != original, f"the engine did not pick up the streamed weights (lora={lora})"
        ray.get(engine.update_weights.remote(trainer.engine_weights.remote()))
        assert _texts(engine, prompts) == streamed, f"streamed and whole pushes differ (lora={lora})"
        ray.get(engine.update_weights.remote(_base(smollm2_path)))
        assert _texts(engine, prompts) == original
        # an engine on another node: the same buckets, each its own Ray object instead of a view of /dev/shm
        Actors(engine, trainer, None, same_node=False).sync_weights("bfloat16")
        assert _texts(engine, prompts) == streamed, f"buckets as Ray objects and in shared memory differ (lora={lora})"
        ray.get(engine.update_weights.remote(_base(smollm2_path)))
        stop_trainer(trainer)  # as the driver stops it: its shared weight file goes too


def _base(path):
    from posttrain.core.policy import engine_state_dict
    from transformers import AutoModelForCausalLM

    return engine_state_dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))


def test_engine_logprobs_agree_with_trainer(engine, prompts, smollm2_path):
    """The same tokens scored by vLLM (bf16) and by the trainer (bf16 autocast) agree closely."""
    result = ray.get(engine.generate.remote(prompts, SamplingSpec(n=2, max_tokens=16)))
    trainer = trainer_actor(smollm2_path, TrainerConfig(micro_batch_size=8))
    seqs = Sequences([prompts[c.prompt_index] for c in result.completions], [c.token_ids for c in result.completions])
    trainer_logprobs = ray.get(trainer.logprobs.remote(seqs))
    engine_flat = torch.tensor([lp for c in result.completions for lp in c.logprobs])
    trainer_flat = torch.tensor([lp for row in trainer_logprobs for lp in row])
    assert (engine_flat - trainer_flat).abs().mean() < 0.1
    stop_trainer(trainer)  # as the driver stops it: its shared weight file goes too


def test_submit_and_poll_return_each_prompt_when_it_is_done_and_a_bad_prompt_loses_nothing(engine, prompts):
    short, long = SamplingSpec(n=1, max_tokens=2, temperature=0.0), SamplingSpec(n=2, max_tokens=40)
    with pytest.raises(Exception, match="maximum context length"):  # the call's other requests go too
        ray.get(engine.submit.remote([prompts[0], list(range(600))], [short, short]))
    tickets = ray.get(engine.submit.remote(prompts[:2], [long, short]))
    first = ray.get(engine.poll.remote())
    assert [ticket for ticket, _ in first] == [tickets[1]]  # the 2-token prompt, while the other still runs
    later = ray.get(engine.submit.remote(prompts[2:], [short]))  # joins the running batch
    done = dict(first)
    while len(done) < 3:
        done |= dict(ray.get(engine.poll.remote()))
    assert sorted(done) == sorted([*tickets, *later]) and ray.get(engine.poll.remote()) == []
    assert [len(done[t]) for t in (*tickets, *later)] == [2, 1, 1]
    assert all(len(c.token_ids) <= 40 for c in done[tickets[0]]) and len(done[tickets[1]][0].token_ids) <= 2
    assert ray.get(engine.generate.remote(prompts[:1], short)).completions  # the engine is clean for generate
