"""Resources per role: what no cluster could place fails at validation, what this cluster cannot hold at start."""

import pytest
import yaml

from posttrain.core.placement import PlacementError, check_cluster, stage_resources
from posttrain.recipe import RecipeError, load_recipe

MINIMAL = {"model": {"path": "tiny-random"}, "task": {"sources": [{"kind": "arithmetic"}]}}


def _recipe(tmp_path, **sections):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **sections}))
    return load_recipe(path)


def _error(tmp_path, **sections) -> str:
    with pytest.raises(RecipeError) as caught:
        _recipe(tmp_path, **sections)
    return str(caught.value)


def test_two_nccl_ranks_on_half_a_gpu_each_are_refused_with_the_sizes(tmp_path):
    message = _error(tmp_path, trainer={"world_size": 2, "num_gpus": 0.5})
    assert "trainer.num_gpus: 0.5 with trainer.world_size 2" in message and "a GPU of its own" in message


def test_a_rank_asking_for_several_gpus_is_told_to_use_world_size(tmp_path):
    message = _error(tmp_path, trainer={"num_gpus": 4})
    assert "trainer.num_gpus: 4" in message and "trainer.world_size: 4" in message


def test_fractional_gpus_above_one_and_a_tensor_parallel_engine_without_its_gpus(tmp_path):
    message = _error(tmp_path, engine={"num_gpus": 1.5, "tensor_parallel_size": 2})
    assert "engine.num_gpus: 1.5 GPUs" in message and "engine.tensor_parallel_size 2" in message


def test_stage_resources_count_every_rank(tmp_path):
    recipe = _recipe(tmp_path, trainer={"world_size": 4, "num_gpus": 1, "num_cpus": 2}, engine={"num_gpus": 2, "tensor_parallel_size": 2})
    assert stage_resources(recipe) == {"CPU": 1 + 4 * 2, "GPU": 2 + 4}


def test_a_cluster_too_small_fails_at_start_naming_roles_and_sizes(tmp_path):
    recipe = _recipe(tmp_path, trainer={"world_size": 8, "num_gpus": 1}, engine={"num_gpus": 1})
    node = {"CPU": 16.0, "GPU": 8.0}
    check_cluster(recipe, [node, node])  # 9 GPUs over two 8-GPU nodes: fits
    with pytest.raises(PlacementError, match=r"needs 9 GPU \(1 engine x .*8 trainer rank x .*the cluster has 8"):
        check_cluster(recipe, [node])
    with pytest.raises(PlacementError, match=r"engine: one engine needs \{'CPU': 1, 'GPU': 2\}; no node offers it"):
        check_cluster(recipe.model_copy(update={"engine": recipe.engine.model_copy(update={"num_gpus": 2})}), [{"CPU": 4, "GPU": 1}] * 4)


def test_engine_replicas_count_in_the_stage_and_the_cluster_check(tmp_path):
    recipe = _recipe(tmp_path, engine={"replicas": 3, "num_gpus": 2, "tensor_parallel_size": 2, "num_cpus": 2},
                     trainer={"num_gpus": 1})
    assert stage_resources(recipe) == {"CPU": 3 * 2 + 1, "GPU": 3 * 2 + 1}
    check_cluster(recipe, [{"CPU": 8.0, "GPU": 8.0}])
    with pytest.raises(PlacementError, match=r"needs 7 GPU \(3 engine x \{'CPU': 2.0, 'GPU': 2.0\}"):
        check_cluster(recipe, [{"CPU": 8.0, "GPU": 6.0}])
    assert "engine.replicas: Input should be greater than or equal to 1" in _error(tmp_path, engine={"replicas": 0})
