"""Resume trusts nothing it finds in a run directory: a kill mid-write tears the last line of a
JSONL log (tolerated, with one warning); a bad line before the last is an error naming file and line."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from posttrain import cli
from posttrain.core.resume import resume_point
from posttrain.core.rundir import RunDir

TORN = '{"step": 3, "reward/mean": 0.5, "ti'  # what a SIGKILL inside handle.write leaves


def _run_with_rows(tmp_path, name: str, steps: range, tail: str = "") -> RunDir:
    run = RunDir(tmp_path, "r")
    (run.path / name).write_text("".join(json.dumps({"step": s, "x": float(s)}) + "\n" for s in steps) + tail)
    return run


def _torn_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "torn" in r.getMessage()]


def test_torn_last_metrics_line_is_dropped_with_one_warning(tmp_path, caplog):
    run = _run_with_rows(tmp_path, "metrics.jsonl", range(3), TORN)
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        assert [row["step"] for row in run.read_metrics()] == [0, 1, 2]
    (warning,) = _torn_warnings(caplog)
    assert "metrics.jsonl" in warning and "line 4" in warning


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.jsonl"])
def test_rewind_over_a_torn_last_line_leaves_a_clean_log(tmp_path, caplog, name):
    run = _run_with_rows(tmp_path, name, range(4), TORN)
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        run.rewind(2)
    assert len(_torn_warnings(caplog)) == 1
    run.log_samples(2, [{"text": "again"}]) if name == "samples.jsonl" else run.log_metrics(2, {"x": 2.0})
    rows = [json.loads(line) for line in (run.path / name).read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    run.close()


def test_a_bad_line_in_the_middle_names_the_file_and_line(tmp_path):
    run = _run_with_rows(tmp_path, "metrics.jsonl", range(2), TORN + "\n" + json.dumps({"step": 9}) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3 of 4 is not a JSON object"):
        run.read_metrics()
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3 of 4"):
        run.rewind(1)


def test_killed_before_the_first_checkpoint_restarts_with_clean_logs(tmp_path):
    """No checkpoint: step 0 is redone, so the old rows (and the torn line) must go, or the next
    rows would be glued onto the torn one and duplicate steps."""
    run = _run_with_rows(tmp_path, "metrics.jsonl", range(3), TORN)
    (run.path / "samples.jsonl").write_text('{"step": 0, "text": "a"}\n{"step": 1, "te')
    assert resume_point(run, trainer=None, sync_engine=None) == 0
    run.log_metrics(0, {"x": 0.0})
    assert [row["step"] for row in run.read_metrics()] == [0]
    assert (run.path / "samples.jsonl").read_text() == ""
    run.close()


def test_run_refuses_a_damaged_log_before_starting_ray(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    _run_with_rows(out, "metrics.jsonl", range(2), "garbage\n" + json.dumps({"step": 2}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": "tiny-random"}, "task": {"sources": [{"kind": "arithmetic"}]},
                                      "run": {"name": "r", "output_dir": str(out)}}))

    def no_ray():
        raise AssertionError("Ray was started for a run that cannot resume")

    monkeypatch.setattr(cli, "init_ray", no_ray)
    assert cli.main(["run", str(recipe)]) == 1
    message = capsys.readouterr().err
    assert "metrics.jsonl: line 3" in message and len(message) < 600
