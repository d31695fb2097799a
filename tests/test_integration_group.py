"""A trainer group through Ray: rank 0 starts rank 1 in a placement group and drives it; the driver sees one actor.

One GRPO update, the engine weights and their bucket stream through ``start_trainer`` (2 gloo ranks as Ray
actors) equal a whole-model ``PolicyTrainer`` in this process; killing rank 0 takes rank 1 with it.
"""

import time

import pytest
import ray
import torch
from ray.util.placement_group import placement_group_table

from posttrain.core.group import start_trainer, stop_trainer
from posttrain.core.policy import PolicyTrainer
from rollout.weight_buckets import bucket_tensors
from tests.test_group import GRPO_EXTRAS, SEQS, WEIGHT_TOL, _cfg, _grpo_loss

pytestmark = pytest.mark.integration


def test_a_two_rank_group_on_ray_updates_as_one_trainer(ray_local, tiny_model_path):
    leader = start_trainer(tiny_model_path, _cfg(2, num_cpus=0.5), seed=0)
    metrics = ray.get(leader.update.remote(SEQS, _grpo_loss(), GRPO_EXTRAS))
    weights = ray.get(leader.engine_weights.remote("float32"))
    streamed = {}  # the weight sync's path: a Ray streaming generator on rank 0, rank 1 gathering beside it
    for ref in leader.weight_buckets.options(num_returns="streaming").remote("float32", True):
        streamed.update((name, tensor.clone()) for name, tensor in bucket_tensors(ray.get(ref)))
    as_objects = {}  # an engine on another node: each bucket's tensors as one Ray object
    for ref in leader.weight_buckets.options(num_returns="streaming").remote("float32", True, False):
        as_objects.update(ray.get(ref))
    peers = ray.get(leader.__ray_call__.remote(lambda self: self.peers))

    whole = PolicyTrainer(tiny_model_path, _cfg(1), seed=0, threads=1)
    expected = whole.update(SEQS, _grpo_loss(), GRPO_EXTRAS)
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    for name, tensor in whole.engine_weights("float32").items():
        torch.testing.assert_close(weights[name], tensor, **WEIGHT_TOL, msg=name)
        torch.testing.assert_close(streamed[name], weights[name], atol=0, rtol=0, msg=name)
        torch.testing.assert_close(as_objects[name], weights[name], atol=0, rtol=0, msg=name)

    stop_trainer(leader)  # as run_loop does: kills rank 0 (rank 1 is owned by it) and frees the placement group
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            ray.get(peers[0].peak_memory_gib.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            break
        time.sleep(1)
    else:
        pytest.fail("rank 1 outlived rank 0")
    assert [info["state"] for info in placement_group_table().values() if info["state"] != "REMOVED"] == []
