"""``posttrain report`` on run directories written by real runs (tests/fixtures/rundirs: a GRPO run with
two effort modes and a budget sweep, a pre-modes GRPO run, a 12-teacher distillation run; checkpoints
reduced to their directory names, samples to 8 rows)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.report import build_report, discover, report_dirs, summarize_stages

FIXTURES = Path(__file__).parent / "fixtures" / "rundirs"


@pytest.fixture
def rundirs(tmp_path) -> Path:
    target = tmp_path / "runs"
    shutil.copytree(FIXTURES, target)
    return target


def _images(page: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_grpo_run_report_has_headline_numbers_and_every_plot(rundirs, capsys):
    run = rundirs / "grpo_modes"
    assert cli_main(["report", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    (section,) = report["sections"]
    assert section["type"] == "grpo" and section["eval_tags"] == ["before", "after"]
    rows = {row["mode"]: row for row in section["scores"]}
    assert set(rows) == {"non_think", "high"}
    assert rows["high"]["before"] == pytest.approx(0.25) and rows["high"]["delta"] == pytest.approx(0.0)
    train = section["train"]
    assert train["metric"] == "reward/mean" and train["steps"] == 4
    assert train["first_quarter"] == pytest.approx(0.129, abs=1e-3) and train["last_quarter"] == pytest.approx(0.229, abs=1e-3)
    assert set(section["times"]["phases_s"]) == {"generate", "reward", "logprobs", "update", "weight_sync"}
    assert section["token_use"]["after"]["non_think"]["thinking"] == 0.0
    assert section["token_use"]["after"]["high"]["thinking"] > 0
    assert section["train_token_use"]["high"]["thinking"] > 0
    assert [p["budget"] for p in section["budget_sweeps"]["after"]["points"]] == [4, 16, 48]
    assert section["checkpoints"] == [4] and section["final_checkpoint"].endswith("step_4")
    page = (run / "report.html").read_text()
    assert len(_images(page)) == 4  # curves, scores, token use, budget sweep
    assert "accuracy vs thinking budget" in page and "<table>" in page
    markdown = (run / "report.md").read_text()
    for link in re.findall(r"\]\((report_files/[^)]+)\)", markdown):
        assert (run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reward/mean 0.129 -> 0.229" in capsys.readouterr().out


def test_distill_run_report_has_the_recovery_table(rundirs):
    run = rundirs / "distill"
    assert cli_main(["report", str(run), "--format", "html"]) == 0
    assert not (run / "report.md").exists()
    (section,) = json.loads((run / "report.json").read_text())["sections"]
    assert section["type"] == "distill" and section["train"]["metric"] == "distill/loss"
    assert len(section["recovery"]) == 12
    add_high = section["recovery"]["add/high"]
    assert (add_high["base"], add_high["teacher"], add_high["student"]) == pytest.approx((0.3, 0.75, 0.6833), abs=1e-3)
    assert {row["suite"] for row in section["scores"]} == {"add", "sub", "mul", "chain"}
    page = (run / "report.html").read_text()
    assert "student vs teachers" in page and len(_images(page)) == 4  # curves, scores, tokens, recovery


def test_pre_modes_eval_files_read_as_the_default_mode(rundirs):
    written = report_dirs([rundirs / "grpo_premodes"], formats=("md",))
    assert [p.name for p in written] == ["report.json", "report.md"]
    report, _ = build_report([rundirs / "grpo_premodes"])
    (row,) = report["sections"][0]["scores"]
    assert row["mode"] == "default" and row["before"] < row["after"]
    assert row["after pass@4"] == pytest.approx(0.6)


def _pipeline(rundirs: Path, root: Path) -> Path:
    """A pipeline directory as the driver writes it: the ledger, a run directory per stage, the eval stage."""
    stages = root / "stages"
    shutil.copytree(rundirs / "grpo_modes", stages / "specialist-add")
    shutil.copytree(rundirs / "distill", stages / "distill")
    (stages / "teachers.json").write_text("[]")
    after = json.loads((rundirs / "grpo_modes" / "eval" / "after.json").read_text())
    (stages / "eval").mkdir()
    (stages / "eval" / "add.json").write_text(json.dumps(after))
    table = [{"domain": "add", "suite": e["suite"], "mode": e["mode"], "base": 0.25, "specialist": 0.25,
              "student": e["accuracy"], "student_thinking_tokens": 5.0, "student_answer_tokens": 9.0} for e in after.values()]
    (stages / "eval" / "table.json").write_text(json.dumps(table))
    ledger = {
        "specialist-add": {"status": "done", "seconds": 198.0, "outputs": {"run_dir": "runs/pipe/stages/specialist-add"}},
        "teachers": {"status": "done", "seconds": 1.5, "outputs": {"registry": "runs/pipe/stages/teachers.json"}},
        "distill": {"status": "done", "seconds": 4200.0, "outputs": {"run_dir": "runs/pipe/stages/distill"}},
        "eval": {"status": "running", "outputs": {}},
    }
    (root / "pipeline.json").write_text(json.dumps(ledger))
    return root


def test_pipeline_directory_gives_a_section_per_stage_and_stage_times(rundirs, tmp_path):
    pipeline = _pipeline(rundirs, tmp_path / "pipe")
    assert cli_main(["report", str(pipeline)]) == 0
    report = json.loads((pipeline / "report.json").read_text())
    assert report["pipeline"] is True
    assert [s["name"] for s in report["sections"]] == ["specialist-add", "distill", "eval"]
    table = {row["stage"]: row for row in report["stages"]}
    assert table["specialist-add"]["wall_s"] == 198.0 and table["eval"]["status"] == "running"
    assert table["teachers"]["status"] == "done"
    student = report["sections"][2]
    assert student["type"] == "student_eval" and len(student["student_table"]) == 2
    assert student["eval_tags"] == ["student"] and {r["mode"] for r in student["scores"]} == {"non_think", "high"}
    page = (pipeline / "report.html").read_text()
    assert "<h2>stages</h2>" in page and "student vs specialists" in page
    assert len(_images(page)) == 1 + 4 + 4 + 3  # stages; GRPO; distill; eval stage: scores, tokens, student
    markdown = (pipeline / "report.md").read_text()
    assert "| distill | done | 70.0 min |" in markdown


def test_stage_list_does_not_depend_on_the_layout(rundirs):
    report, runs = summarize_stages([("specialist", rundirs / "grpo_modes"), ("student", rundirs / "distill")])
    assert [r.name for r in runs] == ["specialist", "student"]
    assert [row["status"] for row in report["stages"]] == ["done", "done"]
    assert discover(rundirs / "distill") == ([("distill", rundirs / "distill")], {})


def test_several_run_directories_and_a_missing_one(rundirs, tmp_path, capsys):
    out = tmp_path / "both"
    assert cli_main(["report", str(rundirs / "grpo_modes"), str(rundirs / "grpo_premodes"), "--output", str(out)]) == 0
    assert len(json.loads((out / "report.json").read_text())["sections"]) == 2
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_intermediate_evals_samples_config_and_a_torn_last_metrics_line(rundirs):
    run = rundirs / "grpo_modes"
    middle = json.loads((run / "eval" / "before.json").read_text())
    for entry in middle.values():
        entry["accuracy"] = 0.5
    (run / "eval" / "step_2.json").write_text(json.dumps(middle))  # eval.every: 2
    outputs = [{"suite": "s", "mode": m, "question": f"q{i}", "output": f"a|{i}\nline", "score": 1.0}
               for m in ("non_think", "high") for i in range(3)]
    (run / "eval" / "after_outputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in outputs))
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "reward/me')  # a run killed mid-write
    assert cli_main(["report", str(run)]) == 0
    (section,) = json.loads((run / "report.json").read_text())["sections"]
    assert section["eval_tags"] == ["before", "after"] and section["train"]["steps"] == 4  # step_2 is no column; torn row dropped
    curve = section["eval_curve"]["arithmetic(max=15,ops=+-,terms=2)/high"]
    assert [step for step, _ in curve] == [0, 2, 4] and curve[1][1] == 0.5
    wheres = [row["where"] for row in section["samples"]]
    assert wheres[0] == "train step 0" and wheres.count("eval after: s") == 4  # two per suite/mode
    assert section["config"]["grpo.steps"] == 4
    page = (run / "report.html").read_text()
    assert len(_images(page)) == 5  # + the held-out score over training
    for heading in ("held-out score over training", "sample completions", "resolved config"):
        assert heading in page
    markdown = (run / "report.md").read_text()
    assert "a\\|0<br>line" in markdown and "| grpo.steps | 4 |" in markdown


def test_learning_curves_name_the_metrics_the_loops_log():
    from posttrain.report_plots import _matching

    row = {"step": 0, "reward/mean": 1, "reward/std": 0, "reward/math_verify/format": 1, "reward_raw/math_verify": 1,
           "mode/high/reward": 1, "mode/high/truncated_share": 0, "distill/kl/add/high": 1}
    assert _matching([row], ("reward_raw/*", "reward/*/*")) == ["reward_raw/math_verify", "reward/math_verify/format"]
    assert _matching([row], ("mode/*/reward",)) == ["mode/high/reward"]
    assert _matching([row], ("distill/kl/*",)) == [], "one segment per star"
    assert _matching([row], ("distill/kl/**",)) == ["distill/kl/add/high"]
