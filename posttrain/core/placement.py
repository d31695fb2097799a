"""Where a recipe's actors go: resources per role, checked before any work starts.

A recipe names resources per role -- ``trainer.num_cpus/num_gpus`` per trainer rank (times
``trainer.world_size``), ``engine.num_cpus/num_gpus`` per engine (times ``engine.replicas``), ``distill.teacher_num_*``
per teacher pool actor (times ``teacher_shards x teacher_replicas``). ``check_placement`` refuses at validation what no cluster could run
(a fractional GPU above 1, two NCCL ranks sharing a GPU, a tensor-parallel engine without
its GPUs), naming the field and the sizes; ``check_cluster`` refuses at start what the
cluster at hand cannot hold, with the sizes asked and offered, instead of waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Recipe


@dataclass(frozen=True)
class Role:
    """``count`` actors of ``cpus`` / ``gpus`` each (Ray resources), configured at ``where``."""

    name: str
    where: str
    count: int
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        return {key: value for key, value in {"CPU": self.cpus, "GPU": self.gpus}.items() if value > 0}


def roles(recipe: Recipe, trainer: bool = True) -> list[Role]:
    """The actors a stage of ``recipe`` starts (``trainer=False``: an eval, the engine only)."""
    found = [Role("engine", "engine", recipe.engine.replicas, recipe.engine.num_cpus, recipe.engine.num_gpus)]
    if trainer:
        cfg = recipe.trainer
        found.append(Role("trainer rank", "trainer", cfg.world_size, cfg.num_cpus, cfg.num_gpus))
    if trainer and recipe.distill:
        cfg = recipe.distill
        found.append(Role("teacher pool", "distill", cfg.teacher_shards * cfg.teacher_replicas, cfg.teacher_num_cpus,
                          cfg.teacher_num_gpus))
    return found


def stage_resources(recipe: Recipe, trainer: bool = True) -> dict[str, float]:
    """Every role's resources summed: what a pipeline stage reserves as one bundle."""
    cpus = sum(role.count * role.cpus for role in roles(recipe, trainer))
    gpus = sum(role.count * role.gpus for role in roles(recipe, trainer))
    return {"CPU": cpus} | ({"GPU": gpus} if gpus else {})


def check_placement(recipe: Recipe) -> list[str]:
    """What no cluster could place, with field paths and sizes."""
    problems = []
    gpu_fields = {"engine.num_gpus": recipe.engine.num_gpus, "trainer.num_gpus": recipe.trainer.num_gpus}
    if recipe.distill:
        gpu_fields["distill.teacher_num_gpus"] = recipe.distill.teacher_num_gpus
    for where, gpus in gpu_fields.items():
        if gpus > 1 and gpus != int(gpus):
            problems.append(f"{where}: {gpus} GPUs: Ray places a fraction of one GPU or whole GPUs, not {gpus}")
    trainer = recipe.trainer
    if trainer.num_gpus > 1:
        problems.append(
            f"trainer.num_gpus: {trainer.num_gpus}: a trainer rank drives one GPU; for {int(trainer.num_gpus)} GPUs "
            f"set trainer.num_gpus: 1 and trainer.world_size: {int(trainer.num_gpus) * trainer.world_size}"
        )
    if trainer.world_size > 1 and 0 < trainer.num_gpus < 1:
        problems.append(
            f"trainer.num_gpus: {trainer.num_gpus} with trainer.world_size {trainer.world_size}: each rank needs a GPU "
            "of its own (NCCL runs one rank per device)"
        )
    engine = recipe.engine
    if engine.tensor_parallel_size > 1 and engine.num_gpus and engine.num_gpus != engine.tensor_parallel_size:
        problems.append(
            f"engine.num_gpus: {engine.num_gpus} with engine.tensor_parallel_size {engine.tensor_parallel_size}: "
            f"vLLM shards the engine over {engine.tensor_parallel_size} GPUs; reserve them (engine.num_gpus: {engine.tensor_parallel_size})"
        )
    return problems


def check_cluster(recipe: Recipe, nodes: list[dict[str, float]], trainer: bool = True) -> None:
    """Raise ``PlacementError`` when ``nodes`` (each node's total resources) cannot hold every role at once."""
    wanted = roles(recipe, trainer)
    for role in wanted:
        bundle = role.bundle()
        if bundle and not any(all(node.get(key, 0) >= value for key, value in bundle.items()) for node in nodes):
            raise PlacementError(f"{role.where}: one {role.name} needs {bundle}; no node offers it ({_offers(nodes, bundle)})")
    total = stage_resources(recipe, trainer)
    for key, value in total.items():
        offered = sum(node.get(key, 0) for node in nodes)
        if value > offered:
            parts = ", ".join(f"{role.count} {role.name} x {role.bundle()}" for role in wanted if role.bundle())
            raise PlacementError(f"the run needs {value:g} {key} ({parts}); the cluster has {offered:g}")


class PlacementError(RuntimeError):
    """The cluster cannot hold the recipe's actors."""


def _offers(nodes: list[dict[str, float]], bundle: dict[str, float]) -> str:
    return "nodes offer " + ", ".join(str({key: node.get(key, 0) for key in bundle}) for node in nodes)
