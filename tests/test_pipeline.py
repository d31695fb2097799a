"""Pipeline planning and the stage ledger, without running a stage."""

import json
from pathlib import Path

import pytest

from posttrain.recipe import distill_recipe, specialist_recipes, teacher_entries
from posttrain.recipe import RecipeError, load_recipe
from posttrain.stages import StageFailed, StageLedger

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "recipes" / "tiny_pipeline.yaml"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # stage recipe paths are relative to the working directory


def test_stages_get_the_pipelines_model_modes_and_run_directory(tmp_path):
    recipe = load_recipe(TINY, [f"run.output_dir={tmp_path}"])
    specialists = specialist_recipes(recipe)
    assert sorted(specialists) == ["add", "sub"]
    assert specialists["sub"].task.sources[0].ops == "-"
    for name, specialist in specialists.items():
        assert specialist.model.path == "tiny-random"
        assert sorted(specialist.modes) == ["high", "non_think"]
        assert Path(specialist.run.output_dir) / specialist.run.name == tmp_path / "tiny_pipeline" / "stages" / f"specialist-{name}"


def test_teachers_are_each_specialists_final_checkpoint_in_each_mode(tmp_path):
    recipe = load_recipe(TINY, [f"run.output_dir={tmp_path}"])
    specialists = specialist_recipes(recipe)
    teachers = teacher_entries(recipe, specialists)
    assert [(t["domain"], t["mode"]) for t in teachers] == [
        ("add", "non_think"), ("add", "high"), ("sub", "non_think"), ("sub", "high")
    ]
    assert teachers[2]["path"].endswith("specialist-sub/checkpoints/step_2")
    assert teachers[0]["path"].endswith("specialist-add/teacher")  # 2 trainer ranks: its shards exported there
    student = distill_recipe(recipe, specialists, check_files=False)
    assert sorted(student.distill.domains) == ["add", "sub"]
    with pytest.raises(RecipeError, match=r"distill.teachers.0 \(add/non_think\).path: checkpoint .* does not exist"):
        distill_recipe(recipe, specialists)  # the checkpoints do not exist yet


def test_a_bad_stage_fails_the_pipeline_recipe_naming_the_stage(tmp_path):
    with pytest.raises(RecipeError, match=r"pipeline.specialists.add \(/.*/missing.yaml\): recipe file"):
        load_recipe(TINY, ["pipeline.specialists.add.recipe=missing.yaml"])
    with pytest.raises(RecipeError, match=r"pipeline.specialists.sub .*task.grpo|grpo.stepz"):
        load_recipe(TINY, ["pipeline.specialists.sub.overrides=[grpo.stepz=3]"])
    with pytest.raises(RecipeError, match="no mode named 'max'"):
        load_recipe(TINY, ["pipeline.teacher_modes=[max]"])
    with pytest.raises(RecipeError, match="defines `modes:` once"):
        load_recipe(TINY, ["modes={}"])


def test_the_ledger_skips_finished_stages_and_reports_failures(tmp_path):
    ledger = StageLedger(tmp_path / "pipeline.json")
    calls = []
    assert ledger.run("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}

    def broken():
        raise RuntimeError("actor died")

    with pytest.raises(StageFailed, match=r"stage 'b' failed: RuntimeError: actor died\n.*re-run the recipe to resume"):
        ledger.run("b", broken)
    again = StageLedger(tmp_path / "pipeline.json")
    assert again.run("a", lambda: calls.append("again") or {}) == {"x": 1}
    assert calls == ["a"]
    saved = json.loads((tmp_path / "pipeline.json").read_text())
    assert saved["a"]["status"] == "done" and saved["b"]["status"] == "failed"
    assert again.run("b", lambda: {"ok": True}) == {"ok": True}
    assert json.loads((tmp_path / "pipeline.json").read_text())["b"]["attempts"] == 2


def test_a_stage_left_running_by_a_killed_driver_runs_again(tmp_path):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"distill": {"status": "running", "attempts": 1}}))
    assert StageLedger(path).run("distill", lambda: {"checkpoint": "step_4"}) == {"checkpoint": "step_4"}
    assert json.loads(path.read_text())["distill"] | {"seconds": 0} == {
        "status": "done", "attempts": 2, "error": None, "seconds": 0, "outputs": {"checkpoint": "step_4"}
    }


def test_a_stale_record_of_a_stopped_ray_cluster_is_not_joined(tmp_path):
    import socket

    from posttrain.raycluster import recorded_cluster_alive

    record = tmp_path / "ray_current_cluster"
    assert not recorded_cluster_alive(record)  # no record
    record.write_text("not an address")
    assert not recorded_cluster_alive(record)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        record.write_text(f"127.0.0.1:{listening.getsockname()[1]}")
        assert recorded_cluster_alive(record)
    assert not recorded_cluster_alive(record)  # the head is gone: start a local cluster instead of waiting
