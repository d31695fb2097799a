"""The ``dataset`` source every domain takes: loading, mapping, held-out rows, prompts as chat turns,
columns reaching rewards as keyword arguments, and the errors ``posttrain check`` gives for data that
does not fit. Local files only; no engine."""

import argparse
import json

import pandas as pd
import pytest

from posttrain.cli import main
from posttrain.core import hub
from posttrain.core.dataset_source import DatasetSource, check_dataset_source, is_heldout
from posttrain.core.models import check_model_config, check_model_spec, load_tokenizer
from posttrain.core.schema import EffortMode, ModelConfig, TaskConfig
from posttrain.core.tasks import check_task_data, make_task
from posttrain.evaluate import add_arguments, plan
from rewards import Sample, score_locally
from rewards.scoring import accepted_fields
from specialists import domains  # noqa: F401  (registers the built-in domains)

ROWS = [{"problem": f"What is {a} + 1?", "final": a + 1, "difficulty": a % 3, "topic": "sum"} for a in range(60)]


def named_only(prompt, completion, *, answer, difficulty):
    return float(difficulty)


def takes_all(prompt, completion, **fields):
    return float(len(fields))


@pytest.fixture
def math_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS))
    return path


def math_source(path, **extra) -> DatasetSource:
    return DatasetSource(kind="dataset", path=str(path), prompt="problem", columns={"answer": "final"}, **extra)


def test_rows_become_problems_with_mapped_fields_and_every_other_column(math_file):
    task = make_task(TaskConfig(domain="math", sources=[math_source(math_file)]))
    problem = task.sample(0, 1)[0]
    assert problem.question.startswith("What is")
    assert problem.answer == str(int(problem.question.split()[2]) + 1)  # a number in the file, text for math_verify
    assert problem.fields["topic"] == "sum" and "difficulty" in problem.fields and "final" not in problem.fields
    heldout = task.heldout_suites(None, 100)["dataset(mine)"]
    assert heldout and all(is_heldout(p.question) for p in heldout)
    trained = {p.question for step in range(30) for p in task.sample(step, 8)}
    assert not trained & {p.question for p in heldout}


def test_filter_heldout_modes_and_a_named_split(math_file, tmp_path):
    only = make_task(TaskConfig(domain="math", sources=[math_source(math_file, filter={"difficulty": [0]}, heldout="none")]))
    assert {p.fields["difficulty"] for step in range(10) for p in only.sample(step, 8)} == {0}
    evaluated = make_task(TaskConfig(domain="math", sources=[math_source(math_file, heldout="all"), math_source(math_file, heldout="none", suite="t")]))
    assert len(evaluated.heldout_suites(["dataset(mine)"], 1000)["dataset(mine)"]) == len(ROWS)
    (tmp_path / "splits").mkdir()
    pd.DataFrame(ROWS[5:]).to_parquet(tmp_path / "splits" / "train.parquet")
    pd.DataFrame(ROWS[:5]).to_parquet(tmp_path / "splits" / "test.parquet")
    split = make_task(TaskConfig(domain="math", sources=[math_source(tmp_path / "splits", heldout_split="test")]))
    assert [p.question for p in split.heldout_suites(None, 100)["dataset(splits)"]] == [r["problem"] for r in ROWS[:5]]
    assert not {p.question for p in split.sample(0, 32)} & {r["problem"] for r in ROWS[:5]}
    assert check(math_source(tmp_path / "splits", heldout_split="dev")) == [
        f"task.sources.0.heldout_split: '{tmp_path / 'splits'}' has no split 'dev' (splits: ['test', 'train'])"]


def test_messages_prompts_keep_system_and_few_shot_turns_under_a_mode(tmp_path, tiny_model_path):
    shots = [{"role": "system", "content": "You add."}, {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    rows = [{"chat": [*shots, {"role": "user", "content": f"{a}+2?"}], "gold": a + 2} for a in range(20)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    source = DatasetSource(kind="dataset", path=str(path), messages="chat", columns={"answer": "gold"}, instruction="")
    task = make_task(TaskConfig(domain="math", sources=[source]))
    problem = task.sample(0, 1)[0]
    tokenizer = load_tokenizer(tiny_model_path)
    mode = EffortMode(thinking=True, thinking_budget=32, max_tokens=64, instruction="Think hard.")
    text = tokenizer.decode(task.prompt_ids(tokenizer, problem, mode=mode))
    assert text.index("You add.") < text.index("Think hard.") < text.index("1+1?") < text.index("2") < text.index(problem.question)
    assert text.rstrip().endswith("<think>") and task.user_message(problem) == problem.question


def test_rewards_get_only_the_columns_they_accept():
    assert accepted_fields(named_only) == {"answer", "difficulty"} and accepted_fields(takes_all) is None
    sample = Sample("p", "c", {"answer": "1", "difficulty": 2, "topic": "sum", "source": "x"})
    scored = score_locally([("tests.test_dataset_source:named_only", 1.0), ("tests.test_dataset_source:takes_all", 1.0)],
                           [sample], fns={"tests.test_dataset_source:named_only": named_only, "tests.test_dataset_source:takes_all": takes_all})
    assert scored.per_reward["tests.test_dataset_source:named_only"] == [2.0]
    assert scored.per_reward["tests.test_dataset_source:takes_all"] == [4.0]
    assert not any(scored.failures.values())


def test_each_domain_maps_its_own_fields(tmp_path):
    pd.DataFrame([{"desc": f"Write f{i}(x) returning x + {i}.", "asserts": [f"assert f{i}(1) == {1 + i}"], "fn": f"f{i}"}
                  for i in range(20)]).to_parquet(tmp_path / "code.parquet")
    code = DatasetSource(kind="dataset", path=str(tmp_path / "code.parquet"), prompt="desc",
                         columns={"tests": "asserts", "entry_point": "fn"}, heldout="none")
    problem = make_task(TaskConfig(domain="code", sources=[code])).sample(0, 1)[0]
    assert problem.fields["tests"][0].startswith("assert f") and problem.fields["entry_point"].startswith("f")
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    rows = [{"prompt": f"Weather in city {i}?", "tools": json.dumps(tools),
             "expected_calls": json.dumps([{"name": "get_weather", "arguments": {"city": f"c{i}"}}])} for i in range(20)]
    (tmp_path / "agent.jsonl").write_text("\n".join(map(json.dumps, rows)))
    agent = DatasetSource(kind="dataset", path=str(tmp_path / "agent.jsonl"), heldout="none")
    task = make_task(TaskConfig(domain="agent", rewards=[{"name": "call_match"}], sources=[agent]))
    problem = task.sample(0, 1)[0]
    assert problem.fields["env"] == "schemas" and problem.fields["tools"] == tools
    assert "get_weather" in task.system_prompt(problem)


def check(source, required=("answer",)) -> list[str]:
    return check_dataset_source(source, "task.sources.0", required)


def test_data_that_does_not_fit_is_named_with_the_columns_that_are_there(math_file, tmp_path, monkeypatch):
    wrong = check(DatasetSource(kind="dataset", path=str(math_file), prompt="problem", columns={"answer": "finl"}))
    assert wrong == [f"task.sources.0.columns.answer: no column 'finl' in {math_file} (columns: ['problem', 'final', 'difficulty', 'topic'])"]
    assert check(DatasetSource(kind="dataset", path=str(math_file), columns={"answer": "final"}))[0].startswith(
        "task.sources.0.prompt: no column 'prompt'")
    missing = check(math_source(tmp_path / "nope.parquet"))
    assert missing[0].startswith(f"task.sources.0.path: file '{tmp_path / 'nope.parquet'}' does not exist")
    assert check(math_source("data/nope.parquet"))[0].startswith("task.sources.0.path: file 'data/nope.parquet' does not exist")
    pd.DataFrame(ROWS).to_parquet(tmp_path / "rows.parquet")
    assert "cannot read" in check(math_source(tmp_path / "rows.parquet", format="json"))[0]
    (tmp_path / "empty.csv").write_text("problem,final\n")
    assert check(math_source(tmp_path / "empty.csv")) == [f"task.sources.0.path: '{tmp_path / 'empty.csv'}' holds no rows (an empty split)"]
    assert check(math_source(math_file, filter={"difficulty": 7}))[0].startswith("task.sources.0.filter: no row")
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    offline = check(math_source("someorg/somedata"))
    assert offline[0].startswith("task.sources.0.path: dataset 'someorg/somedata' looks like a hub id, but it is not in "
                                 "the local cache and the hub is unreachable")
    assert "local" in check_model_spec("someorg/somemodel")


def test_check_reads_rows_as_the_domain_will(tmp_path):
    rows = [{"prompt": f"Write about {i}.", "instruction_id_list": '["change_case:english_lowercase"]', "kwargs": "[{bad"}
            for i in range(20)]
    (tmp_path / "if.jsonl").write_text("\n".join(map(json.dumps, rows)))
    cfg = TaskConfig(domain="instruct", rewards=[{"name": "if_constraints"}],
                     sources=[DatasetSource(kind="dataset", path=str(tmp_path / "if.jsonl"))])
    found = check_task_data(cfg)
    assert len(found) == 1 and found[0][0] == "sources.0.columns" and "JSONDecodeError" in found[0][1]


def test_model_settings_trust_remote_code_template_and_pad(tmp_path, tiny_model_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "x.Y"}}))
    refused = check_model_config(ModelConfig(path=str(model)))
    assert refused and "trust_remote_code: true" in refused[0]
    assert check_model_config(ModelConfig(path=str(model), trust_remote_code=True)) == []
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    tokenizer = load_tokenizer(tiny_model_path, ModelConfig(path=tiny_model_path, chat_template=template))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi<assistant>"
    unpadded = load_tokenizer(tiny_model_path)
    unpadded.pad_token = None
    unpadded.save_pretrained(tmp_path / "nopad")
    padded = load_tokenizer(str(tmp_path / "nopad"))
    assert padded.pad_token_id == padded.eos_token_id is not None
    assert check_model_config(ModelConfig(chat_template="no/such/file.jinja"))


def test_eval_dataset_plans_one_eval_only_suite_and_refuses_a_wrong_column(math_file):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["tiny-random", "--dataset", str(math_file), "--domain", "math", "--prompt-column", "problem",
                              "--column", "answer=final", "--reward", "math_verify", "--reward", "tests.data_reward:bonus_if_correct=0.5"])
    recipe, groups = plan(args, "tiny-random")
    (cfg, suites), = groups
    assert suites == ["dataset(mine)"] and cfg["sources"][0]["heldout"] == "all"
    assert [(r.name, r.weight) for r in recipe.task.rewards] == [("math_verify", 1.0), ("tests.data_reward:bonus_if_correct", 0.5)]
    assert main(["eval", "tiny-random", "--dataset", str(math_file), "--domain", "math", "--prompt-column", "problem",
                 "--column", "answer=finl"]) == 2
