"""EnginePool routing with fake engines (no Ray, no vLLM): spread by load, a prompt's samples together,
sticky multi-turn episodes, weight syncs on every replica, seed keys numbered as one engine numbers them.
The real thing (two vLLM engines in Ray) is ``test_integration_replicas.py``."""

from dataclasses import replace
from types import SimpleNamespace

import pytest

from posttrain.core.chat import prompt_ids
from rollout import engine_pool
from rollout.engine import Completion, GenerateResult, SamplingSpec
from rollout.engine_pool import EnginePool, place, units_by_affinity
from rollout.environments import make_environment
from rollout.multiturn import MultiTurnConfig, multiturn_rollout

from .test_agent_multiturn import ScriptedEngine


class Ref:
    """A stand-in object ref: its value, and whether the work behind it is done."""

    def __init__(self, value, ready: bool = True):
        self.value, self.ready = value, ready


class Handle:
    """A Ray actor handle over a local object: ``method.remote(...)`` runs it at once; with ``pending`` its
    refs read as still running until ``finish()``."""

    def __init__(self, obj, pending: bool = False):
        self.obj, self.pending, self.issued = obj, pending, []

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        return SimpleNamespace(remote=lambda *args: self._issue(method(*(_value(a) for a in args))))

    def _issue(self, value) -> Ref:
        self.issued.append(ref := Ref(value, ready=not self.pending))
        return ref

    def finish(self) -> None:
        for ref in self.issued:
            ref.ready = True


def _value(arg):
    return arg.value if isinstance(arg, Ref) else arg


@pytest.fixture(autouse=True)
def local_ray(monkeypatch):
    """The pool's Ray calls on stand-in refs: ``get`` unwraps, ``wait`` sees ``ready``, tasks run at once."""
    monkeypatch.setattr(engine_pool.ray, "get", lambda ref: [_value(r) for r in ref] if isinstance(ref, list) else _value(ref))
    monkeypatch.setattr(engine_pool.ray, "wait", lambda refs, num_returns=1, timeout=None: ([r for r in refs if r.ready], []))
    monkeypatch.setattr(engine_pool.ray, "put", Ref)
    for task in ("_joined", "_all_done"):
        function = getattr(engine_pool, task)._function
        monkeypatch.setattr(engine_pool, task, SimpleNamespace(remote=lambda *args, f=function: Ref(f(*(_value(a) for a in args)))))


class FakeEngine:
    """Records what reaches it; a completion's tokens say which prompt, sample and seed key it came from."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.prompts: list[list[int]] = []

    def generate(self, prompts, specs):
        self.prompts += prompts
        completions = [
            Completion(index, [prompt[0], k, *spec.seed_key], [0.0] * (2 + len(spec.seed_key)), "", False)
            for index, (prompt, spec) in enumerate(zip(prompts, specs)) for k in range(spec.n)
        ]
        return GenerateResult(completions, seconds=1.0)

    def __getattr__(self, name):  # reseed, update_weights, load_weight_bucket, weights_loaded, ready
        return lambda *args: self.calls.append((name, *args)) or 0.5


def _pool(count=2, pending=False):
    fakes = [FakeEngine() for _ in range(count)]
    handles = [Handle(fake, pending) for fake in fakes]
    return EnginePool(handles), fakes, handles


def test_costliest_first_onto_the_least_loaded():
    assert place([5, 1, 4, 3], [0.0, 0.0]) == [0, 0, 1, 1]  # 5 -> r0, 4 -> r1, 3 -> r1 (4 < 5), 1 -> r0 (5 < 7)
    assert place([1, 1], [10.0, 0.0]) == [1, 1]  # a replica already busy gets nothing until the other catches up
    assert units_by_affinity([SamplingSpec(affinity=a) for a in (7, None, 7, 3, None)]) == [[0, 2], [1], [3], [4]]


def test_a_steps_prompts_are_spread_by_load_with_each_prompts_samples_together():
    pool, fakes, handles = _pool()
    prompts = [[10 + i] * (30 if i == 0 else 2) for i in range(4)]
    result = pool.generate.remote(prompts, SamplingSpec(n=3, max_tokens=4)).value
    assert fakes[0].prompts == [prompts[0]]  # the long prompt alone (30 + 3 x 4) balances three short ones (2 + 12 each)
    assert fakes[1].prompts == prompts[1:]
    assert [c.prompt_index for c in result.completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [c.token_ids[:2] for c in result.completions] == [[10 + i, k] for i in range(4) for k in range(3)]
    assert result.seconds == 1.0 and result.num_tokens == 12 * 4


def test_outstanding_work_steers_the_next_call_away():
    pool, fakes, handles = _pool(pending=True)  # nothing finishes: every call's work stays in flight
    pool.generate.remote([[1] * 50], SamplingSpec(max_tokens=50))
    pool.generate.remote([[2], [3]], SamplingSpec(max_tokens=10))
    assert fakes[0].prompts == [[1] * 50] and fakes[1].prompts == [[2], [3]]
    handles[0].finish()  # replica 0's call is done; replica 1's still runs
    pool.generate.remote([[4]], SamplingSpec(max_tokens=10))
    assert fakes[0].prompts[-1] == [4]


def test_seed_keys_are_the_whole_calls_positions_as_one_engine_numbers_them():
    pool, fakes, handles = _pool()
    pool.reseed.remote(5)
    first = pool.generate.remote([[i] for i in range(5)], SamplingSpec(max_tokens=1)).value
    second = pool.generate.remote([[9], [8]], [SamplingSpec(max_tokens=1), SamplingSpec(max_tokens=1, seed_key=(4, 2))]).value
    assert [c.token_ids[2:] for c in first.completions] == [[0, i] for i in range(5)]  # call 0, positions 0..4
    assert [c.token_ids[2:] for c in second.completions] == [[1, 0], [4, 2]]  # call 1; a caller's own key is kept
    pool.reseed.remote(6)
    assert pool.generate.remote([[7]], SamplingSpec(max_tokens=1)).value.completions[0].token_ids[2:] == [0, 0]


def test_weight_syncs_and_reseeds_reach_every_replica():
    pool, fakes, handles = _pool(3)
    assert pool.update_weights.remote({"w": 1}).value == 0.5  # put in the object store once, read by each
    for bucket in ("b0", "b1"):
        pool.load_weight_bucket.remote(bucket)
    pool.weights_loaded.remote()
    pool.reseed.remote(11)
    for fake in fakes:
        assert fake.calls == [("update_weights", {"w": 1}), ("load_weight_bucket", "b0"), ("load_weight_bucket", "b1"),
                              ("weights_loaded",), ("reseed", 11)]
    with pytest.raises(ValueError, match="2 engines or more"):
        EnginePool([Handle(FakeEngine())])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


SCRIPTS = {
    0: ['{"name": "multiply", "arguments": {"a": 6, "b": 7}}', "The answer is 42."],
    1: ["It is 42."],
    2: ['{"name": "add", "arguments": {"a": 40, "b": 1}}', '{"name": "add", "arguments": {"a": 41, "b": 1}}', "42"],
    3: ['{"name": "add", "arguments": {"a": 1, "b": 1}}', "2"],
}


def test_a_multi_turn_episode_stays_on_its_replica_and_samples_what_one_engine_samples(tokenizer):
    prompts = [prompt_ids(tokenizer, f"question {i}") for i in range(len(SCRIPTS))]
    specs = [SamplingSpec(n=1, max_tokens=200)] * len(prompts)
    env = lambda i: make_environment("calculator", {"answer": 42})  # noqa: E731
    one = ScriptedEngine(tokenizer, SCRIPTS, prompts)
    alone = multiturn_rollout(one, tokenizer, prompts, specs, env, MultiTurnConfig(max_turns=4))
    replicas = [ScriptedEngine(tokenizer, SCRIPTS, prompts, per_poll=1) for _ in range(2)]
    client = EnginePool([Handle(r) for r in replicas]).client()
    pooled = multiturn_rollout(client, tokenizer, prompts, specs, env, MultiTurnConfig(max_turns=4))
    assert [t.token_ids for t in pooled.completions] == [t.token_ids for t in alone.completions]
    assert [t.loss_mask for t in pooled.completions] == [t.loss_mask for t in alone.completions]
    where = {}
    for episode, replica in client.served:
        assert where.setdefault(episode, replica) == replica, f"episode {episode} moved from {where[episode]} to {replica}"
    assert set(where.values()) == {0, 1}  # both replicas served episodes
    assert len(client.served) == sum(t.turns for t in alone.completions)
    served = {index for replica in replicas for batch in replica.batches for index, _ in batch}
    assert served == set(range(len(prompts)))
    assert not client._open and all(load == 0 for load in client.pool.loads())  # every turn's load came back off
    # each turn's seed key: (prompt digest, episode, turn), whatever order turns were submitted in
    keys = [spec.seed_key[1:] for replica in replicas for spec in replica.specs]
    assert sorted(keys) == sorted((episode, turn) for episode, t in enumerate(alone.completions) for turn in range(t.turns))


def test_prompts_sharing_an_affinity_key_share_a_replica():
    pool, fakes, handles = _pool()
    specs = [replace(SamplingSpec(max_tokens=5), affinity=i % 2) for i in range(6)]
    pool.generate.remote([[i] for i in range(6)], specs)
    assert fakes[0].prompts == [[0], [2], [4]] and fakes[1].prompts == [[1], [3], [5]]
