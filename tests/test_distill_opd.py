"""The OPD pieces on the tiny model, no Ray: teachers resolved and checked, the pool's hidden states
rebuild each teacher's logits, and the trainer-side loss equals the KL computed from whole models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from posttrain.demo import make_teacher
from distill.objective import DistillLoss
from distill.routing import Router
from distill.teachers import TeacherPool, check_teachers, resolve_teacher
from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import Recipe, TeacherConfig, TrainerConfig

ARITHMETIC = {"kind": "arithmetic", "max_operand": 9, "count": 200}


def tiny_recipe(teachers: list[dict]) -> Recipe:
    return Recipe.model_validate({
        "model": {"path": "tiny-random", "max_model_len": 256},
        "distill": {
            "domains": {"add": {"sources": [{**ARITHMETIC, "ops": "+"}]}, "sub": {"sources": [{**ARITHMETIC, "ops": "-"}]}},
            "teachers": teachers,
        },
        "modes": {
            "non_think": {"thinking": False, "max_tokens": 16},
            "high": {"thinking": True, "thinking_budget": 8, "max_tokens": 24},
        },
    })


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory, tiny_model_path):
    """An adapter teacher and a full-model teacher, each briefly fine-tuned from the tiny model."""
    root = tmp_path_factory.mktemp("teachers")
    specs = [
        {"domain": "add", "mode": "non_think", "path": str(root / "add-adapter")},
        {"domain": "sub", "mode": "high", "path": str(root / "sub-full")},
    ]
    recipe = tiny_recipe(specs)
    make_teacher(recipe, recipe.distill.teachers[0], steps=3, batch=8, lr=1e-2)
    make_teacher(recipe, recipe.distill.teachers[1], steps=3, batch=8, lr=3e-3, lora=False)
    return specs


def test_teachers_resolve_as_adapter_and_full_model(teacher_dirs, tiny_model_path):
    adapter, full = (resolve_teacher(TeacherConfig(**spec)) for spec in teacher_dirs)
    assert adapter.base == tiny_model_path and full.base is None
    assert check_teachers([TeacherConfig(**spec) for spec in teacher_dirs], "tiny-random") == []


def test_missing_and_mismatched_teachers_are_named(teacher_dirs, tmp_path):
    odd = tmp_path / "odd-vocab"
    shutil.copytree(teacher_dirs[1]["path"], odd)
    vocab = json.loads((odd / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["<|not-in-the-student|>"] = len(vocab["model"]["vocab"])
    (odd / "tokenizer.json").write_text(json.dumps(vocab))
    cfgs = [
        TeacherConfig(domain="add", mode="non_think", path=str(tmp_path / "missing")),
        TeacherConfig(domain="sub", mode="high", path=str(odd)),
    ]
    problems = check_teachers(cfgs, "tiny-random")
    assert len(problems) == 2
    assert problems[0].startswith("distill.teachers.0 (add/non_think).path") and "does not exist" in problems[0]
    assert problems[1].startswith("distill.teachers.1 (sub/high)") and "tokenizer differs" in problems[1]


def test_teacher_of_unknown_domain_is_a_recipe_error():
    with pytest.raises(ValueError, match="teachers.0.domain 'code' is not one of"):
        tiny_recipe([{"domain": "code", "mode": "high", "path": "x"}])


def test_router_draws_every_key_and_repeats_a_step(teacher_dirs, tiny_model_path):
    from transformers import AutoTokenizer

    recipe = tiny_recipe(teacher_dirs)
    teachers = [resolve_teacher(t) for t in recipe.distill.teachers]
    router = Router(recipe, teachers, AutoTokenizer.from_pretrained(tiny_model_path))
    first, again = router.sample(3, 32), router.sample(3, 32)
    assert [p.problem.question for p in first] == [p.problem.question for p in again]
    assert {p.key for p in first} == {("add", "non_think"), ("sub", "high")}
    assert all(("+" in p.message) == (p.key[0] == "add") for p in first)
    assert router.routing([("sub", "high")]) == [[(1, 1.0)]]


def test_router_rollout_gives_single_turn_prompts_the_base_rollout_whatever_task_comes_first(
    teacher_dirs, tiny_model_path, monkeypatch
):
    """The single-turn domains' prompts share one engine call; a multi-turn task (e.g. the agent, first
    in the pipeline's sorted domains) runs only its own prompts."""
    from transformers import AutoTokenizer

    from rollout.engine import Completion, GenerateResult
    from posttrain.core.tasks import Task

    calls = []

    def rollout_of(name):
        def rollout(self, engine, tokenizer, problems, prompts, specs):
            calls.append((name, [problem.question for problem in problems]))
            return GenerateResult([Completion(i, [1], [0.0], name, False) for i in range(len(prompts))], 0.0)

        return rollout

    monkeypatch.setattr(Task, "rollout", rollout_of("base"))
    router = Router(tiny_recipe(teacher_dirs), [resolve_teacher(t) for t in tiny_recipe(teacher_dirs).distill.teachers],
                    AutoTokenizer.from_pretrained(tiny_model_path))
    multi_turn = type("MultiTurn", (type(router.tasks["sub"]),), {"rollout": rollout_of("multi"), "multi_turn": True})
    first = multi_turn.__new__(multi_turn)
    first.__dict__.update(vars(router.tasks["sub"]))
    router.tasks = {"sub": first, "add": router.tasks["add"]}  # the multi-turn task first
    prompts = router.sample(0, 8)
    result = router.rollout(None, prompts, [None] * len(prompts))
    assert [c.text for c in result.completions] == ["multi" if p.key[0] == "sub" else "base" for p in prompts]
    assert sorted(name for name, _ in calls) == ["base", "multi"]


def _random_seqs(count: int, seed: int = 0) -> Sequences:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (count, 2), generator=gen).tolist()
    ids = lambda n: torch.randint(10, 1000, (n,), generator=gen).tolist()  # noqa: E731
    return Sequences([ids(p) for p, _ in lengths], [ids(c) for _, c in lengths])


def _logits(model, seqs: Sequences) -> list[torch.Tensor]:
    """Whole-model float32 logits at each completion position, one sequence at a time."""
    out = []
    for prompt, completion in zip(seqs.prompt_ids, seqs.completion_ids):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        out.append(logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)])
    return out


def test_trainer_loss_equals_the_kl_of_whole_models(teacher_dirs, tiny_model_path):
    """Pool hidden states + heads, streamed in the trainer == KL(student || teacher) from full forwards."""
    teachers = [resolve_teacher(TeacherConfig(**spec)) for spec in teacher_dirs]
    pool = TeacherPool(teachers, micro_batch_size=3, threads=1)
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(micro_batch_size=4, autocast="none"), threads=1)
    heads = pool.heads()
    trainer.install(heads)
    assert heads.index == [0, 1]  # the adapter keeps its base's head; the full model has its own
    seqs = _random_seqs(7)
    routing = [[(row % 2, 1.0)] for row in range(len(seqs))]
    num_tokens = sum(map(len, seqs.completion_ids))
    got = trainer.evaluate(seqs, DistillLoss("reverse_kl", num_tokens, chunk_size=5), pool.score(seqs, routing))

    student = _logits(trainer.model, seqs)
    teacher_logits = [_logits(pool._activate(k), seqs) for k in range(2)]
    kl_rows = [
        F.kl_div(F.log_softmax(teacher_logits[routes[0][0]][row], -1), F.log_softmax(student[row], -1),
                 log_target=True, reduction="none").sum(-1)
        for row, routes in enumerate(routing)
    ]
    expected = torch.cat(kl_rows).sum() / num_tokens
    assert got["loss"] == pytest.approx(float(expected), rel=0.03)  # teachers' hidden states travel in bf16
    per_teacher = [torch.cat(kl_rows[k::2]).mean() for k in range(2)]
    for k in range(2):
        assert got[f"kl_sum/{k}"] / got[f"tokens/{k}"] == pytest.approx(float(per_teacher[k]), rel=0.03)


def test_several_teachers_per_prompt_sum_with_their_weights(teacher_dirs, tiny_model_path):
    teachers = [resolve_teacher(TeacherConfig(**spec)) for spec in teacher_dirs]
    pool = TeacherPool(teachers, micro_batch_size=4, threads=1)
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(micro_batch_size=3), threads=1)
    trainer.install(pool.heads())
    seqs = _random_seqs(5, seed=1)
    num_tokens = sum(map(len, seqs.completion_ids))

    def loss(routing):
        return trainer.evaluate(seqs, DistillLoss("reverse_kl", num_tokens), pool.score(seqs, routing))["loss"]

    only = [loss([[(k, 1.0)] for _ in range(len(seqs))]) for k in range(2)]
    mixed = loss([[(0, 0.25), (1, 0.75)] for _ in range(len(seqs))])
    assert mixed == pytest.approx(0.25 * only[0] + 0.75 * only[1], rel=1e-4)


def test_teacher_with_an_undefined_mode_fails_before_work(tmp_path):
    import yaml

    from posttrain.recipe import RecipeError, load_recipe

    data = tiny_recipe([{"domain": "add", "mode": "high", "path": "tiny-random"}]).model_dump(mode="json")
    data["distill"]["teachers"][0]["mode"] = "max"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"distill.teachers.0.mode: no mode named 'max'"):
        load_recipe(tmp_path / "r.yaml")
