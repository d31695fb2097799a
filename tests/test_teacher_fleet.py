"""Teachers at scale (``distill/fleet.py``): the teachers split over shards and replicated, their hidden
states left in Ray's object store per micro-batch and fetched by the trainer (rank) that runs it.

The distillation loss and update from a 2-shard x 2-replica fleet equal those from one in-process pool,
on one trainer and on a 2-rank trainer group."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray
import torch

from distill.fleet import TeacherFleet
from distill.objective import DistillLoss
from distill.teachers import Teacher, TeacherPool, check_teachers, resolve_teacher, shard_teachers
from posttrain.core.group import start_trainer, stop_trainer
from posttrain.core.policy import PolicyTrainer
from posttrain.core.remote_rows import RemoteRow, fetch_rows, remote_refs
from posttrain.core.schema import TeacherConfig
from tests.test_distill_opd import _random_seqs, teacher_dirs  # noqa: F401 -- a fixture
from tests.test_group import WEIGHT_TOL, _cfg


def _teacher(domain: str, mode: str, path: str, base: str | None = None) -> Teacher:
    return Teacher(domain, mode, path, base)


def test_shards_keep_a_base_and_its_adapters_together_and_balance_models():
    teachers = [
        _teacher("math", "high", "/ck/math-high", "/base"),
        _teacher("code", "high", "/ck/code-full"),
        _teacher("math", "max", "/ck/math-max", "/base"),
        _teacher("agent", "high", "/ck/agent-full"),
        _teacher("if", "high", "/ck/if-full"),
    ]
    assert shard_teachers(teachers, 1) == [[0, 1, 2, 3, 4]]
    two = shard_teachers(teachers, 2)
    assert two == [[0, 2, 4], [1, 3]]  # two models each: the base (with its 2 adapters) + one, and two
    assert sorted(len(part) for part in shard_teachers(teachers, 4)) == [1, 1, 1, 2]


def test_more_shards_than_teacher_models_is_refused_with_the_counts():
    adapters = [_teacher("math", mode, f"/ck/{mode}", "/base") for mode in ("non_think", "high", "max")]
    with pytest.raises(ValueError, match=r"teacher_shards: 2 shards for 1 distinct teacher models"):
        shard_teachers(adapters, 2)


def test_check_teachers_names_a_shard_count_no_teacher_set_can_fill(teacher_dirs):  # noqa: F811
    cfgs = [TeacherConfig(**spec) for spec in teacher_dirs]
    assert check_teachers(cfgs, "tiny-random", shards=2) == []
    assert any("teacher_shards: 3" in problem for problem in check_teachers(cfgs, "tiny-random", shards=3))


def test_plain_extras_pass_through_fetch_rows():
    extras = {"advantages": [0.5, -0.5], "rollout_logprobs": [[0.1], [0.2]]}
    assert remote_refs(extras) == [] and fetch_rows(extras) is extras


@pytest.mark.integration
def test_a_sharded_replicated_fleet_scores_and_updates_as_one_pool(ray_local, teacher_dirs, tiny_model_path):  # noqa: F811
    teachers = [resolve_teacher(TeacherConfig(**spec)) for spec in teacher_dirs]
    cfg = SimpleNamespace(teacher_shards=2, teacher_replicas=2, teacher_num_cpus=0, teacher_num_gpus=0)
    fleet = TeacherFleet(teachers, cfg, micro_batch_size=3)
    assert fleet.shards == [[0], [1]] and len(fleet.actors) == 4  # an adapter over the base, a full model
    pool = TeacherPool(teachers, micro_batch_size=3, threads=1)
    heads = fleet.heads()
    assert heads.index == pool.heads().index == [0, 1]

    seqs = _random_seqs(7, seed=3)
    routing = [[(0, 0.5), (1, 0.5)] if row % 3 == 0 else [(row % 2, 1.0)] for row in range(len(seqs))]
    extras = fleet.score(seqs, routing)
    assert all(isinstance(row, RemoteRow) for row in extras["routes"])
    assert len(remote_refs(extras)) == 3 * 2  # 7 sequences in micro-batches of 3, each sent to both shards
    fetched = fetch_rows(extras)["routes"]
    assert [[(k, w) for k, w, _ in routes] for routes in fetched] == routing

    num_tokens = sum(map(len, seqs.completion_ids))
    loss = DistillLoss("reverse_kl", num_tokens, chunk_size=5)
    whole = PolicyTrainer(tiny_model_path, _cfg(1, micro_batch_size=3), seed=0, threads=1)
    whole.install(heads)
    local = whole.evaluate(seqs, loss, pool.score(seqs, routing))
    remote = whole.evaluate(seqs, loss, extras)
    assert remote["loss"] == pytest.approx(local["loss"], rel=2e-3)  # bf16 states, batched differently

    group = start_trainer(tiny_model_path, _cfg(2, micro_batch_size=3, num_cpus=0.5), seed=0)
    ray.get(group.install.remote(heads))
    metrics = ray.get(group.update.remote(seqs, loss, extras))  # each rank fetches its own micro-batches
    expected = whole.update(seqs, loss, extras)
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    weights = ray.get(group.engine_weights.remote("float32"))
    for name, tensor in whole.engine_weights("float32").items():
        torch.testing.assert_close(weights[name], tensor, **WEIGHT_TOL, msg=name)
    stop_trainer(group)
    for actor in fleet.actors:
        ray.kill(actor)


def test_a_pool_scores_its_micro_batches_in_one_pass_per_teacher(teacher_dirs, monkeypatch):  # noqa: F811
    """``score_chunks`` (what each fleet replica runs once a step): every teacher activated once however many
    micro-batches it serves (a full teacher on a GPU moves once a step), the states sliced per micro-batch."""
    teachers = [resolve_teacher(TeacherConfig(**spec)) for spec in teacher_dirs]
    pool = TeacherPool(teachers, micro_batch_size=2, threads=1)
    activated = []
    activate = pool._activate
    monkeypatch.setattr(pool, "_activate", lambda index: activated.append(index) or activate(index))
    seqs = _random_seqs(7, seed=4)
    routing = [[(row % 2, 1.0)] for row in range(len(seqs))]
    slices = list(pool.score_chunks(seqs, routing, [3, 3, 1]))
    assert sorted(activated) == [0, 1]
    assert [len(part) for part in slices] == [3, 3, 1]
    whole = pool.score_rows(seqs, routing)
    for got, expected in zip([route for part in slices for route in part], whole):
        assert [(k, w) for k, w, _ in got] == [(k, w) for k, w, _ in expected]
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(got, expected))
