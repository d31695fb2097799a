"""Metric sinks: TensorBoard by default, MLflow (local file store) and W&B (offline) when the recipe names them."""

import importlib.util
import json

import pytest

from posttrain.recipe import RecipeError, validate_recipe
from posttrain.core.rundir import RunDir

TASK = {"domain": "math", "sources": [{"kind": "arithmetic"}]}


def _recipe(tmp_path, **run):
    return validate_recipe({"run": {"output_dir": str(tmp_path), "name": "r", **run}, "model": {"path": "tiny-random"}, "task": TASK})


def _log_two_steps(tmp_path, recipe) -> RunDir:
    run = RunDir(recipe.run.output_dir, recipe.run.name)
    run.save_recipe(recipe)
    run.log_eval(0, "before", REPORT, OUTPUTS)
    run.log_samples(0, [{"mode": "high", "reward": 1.0, "prompt": "What is 1 | 2?", "completion": "3\nso 3"}])
    run.log_metrics(0, {"reward/mean": 0.25, "mode/high/reward": 0.5})
    run.log_metrics(1, {"reward/mean": 0.75, "mode/high/reward": 1.0})
    run.close()
    return run


REPORT = {"gsm8k/default": {"suite": "gsm8k", "mode": "default", "problems": 4, "accuracy": 0.25, "pass@4": 0.5,
                            "examples": [{"question": "q"}]}}
OUTPUTS = [{"suite": "gsm8k", "mode": "default", "score": 1.0, "question": "q", "output": "7"}]


def test_tensorboard_is_the_default(tmp_path):
    recipe = _recipe(tmp_path)
    assert recipe.run.trackers == ["tensorboard"]
    run = _log_two_steps(tmp_path, recipe)
    assert list((run.path / "tb").glob("events.out.tfevents.*"))
    assert [row["step"] for row in run.read_metrics()] == [0, 1]


def test_mlflow_file_store_gets_every_step_and_a_resumed_run_continues_it(tmp_path):
    pytest.importorskip("mlflow")
    import mlflow

    recipe = _recipe(tmp_path, trackers=["mlflow"], mlflow={"experiment": "unit"})
    run = _log_two_steps(tmp_path, recipe)
    assert not (run.path / "tb").exists(), "trackers without tensorboard write no TensorBoard events"
    run_id = json.loads((run.path / "trackers.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_id, "reward/mean")
    assert [(m.step, m.value) for m in history] == [(0, 0.25), (1, 0.75)]
    assert client.get_run(run_id).data.params["trainer.lr"] == str(recipe.trainer.lr)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/gsm8k/default/accuracy")] == [(0, 0.25)]
    tables = {a.path for folder in ("samples", "eval/before") for a in client.list_artifacts(run_id, folder)}
    assert tables == {"samples/step_0.json", "eval/before/step_0.json"}
    again = RunDir(recipe.run.output_dir, recipe.run.name)  # a resumed run: same MLflow run
    again.save_recipe(recipe)
    again.log_metrics(2, {"reward/mean": 1.0})
    again.close()
    assert [m.step for m in client.get_metric_history(run_id, "reward/mean")] == [0, 1, 2]


def test_wandb_offline_run_is_written_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = _recipe(tmp_path, trackers=["tensorboard", "wandb"], wandb={"project": "unit"})
    run = _log_two_steps(tmp_path, recipe)
    run_id = json.loads((run.path / "trackers.json").read_text())["wandb"]
    offline = list((run.path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline and list(offline[0].glob("*.wandb")), "the offline run's data file"
    assert list((run.path / "tb").glob("events.out.tfevents.*"))


def test_a_tracker_whose_package_is_missing_fails_validation(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RecipeError, match=r"run\.trackers\.1: 'wandb' needs the 'wandb' package"):
        _recipe(tmp_path, trackers=["tensorboard", "wandb"])


def test_an_unknown_tracker_is_a_field_error(tmp_path):
    with pytest.raises(RecipeError, match=r"run\.trackers\.0"):
        _recipe(tmp_path, trackers=["neptune"])


def test_tensorboard_gets_eval_scalars_at_their_step_and_samples_as_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = _recipe(tmp_path)
    run = _log_two_steps(tmp_path, recipe)
    again = RunDir(recipe.run.output_dir, recipe.run.name)
    again.save_recipe(recipe)
    again.log_eval(5, "step_5", REPORT, OUTPUTS)
    again.close()
    events = EventAccumulator(str(run.path / "tb"), size_guidance={"tensors": 0}).Reload()
    # two writers (the run, then its resumption) leave two event files, read in file-name order
    assert sorted((e.step, e.value) for e in events.Scalars("eval/gsm8k/default/accuracy")) == [(0, 0.25), (5, 0.25)]
    assert {e.value for e in events.Scalars("eval/gsm8k/default/pass@4")} == {0.5}
    text = events.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "What is 1 \\| 2?" in text and "3<br>so 3" in text
    assert events.Tensors("eval/step_5/text_summary")[0].step == 5
    assert [row["step"] for row in run.read_metrics()] == [0, 1], "eval scalars stay out of metrics.jsonl"
