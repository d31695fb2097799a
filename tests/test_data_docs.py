"""Every worked example of docs/data.md passes ``posttrain check`` on files shaped as the page describes
(generated here), so the page and the code cannot drift apart."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from posttrain.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
REWARDS = '''from rewards import reward


def harder_is_worth_more(prompt, completion, *, difficulty, **fields):
    return {"easy": 0.0, "medium": 0.5}.get(difficulty, 1.0)
'''


def doc_recipes() -> dict[str, str]:
    """``{file name: YAML}`` of every block that starts with ``# posttrain run NAME``."""
    blocks = re.findall(r"```yaml\n(# posttrain run (\S+)\n.*?)```", DOC.read_text(), flags=re.S)
    return {name: text for text, name in blocks}


def write_data(root: Path) -> None:
    data = root / "data"
    data.mkdir()
    algebra = [{"problem": f"Solve {k}x = {2 * k}.", "final": 2, "difficulty": d} for k, d in zip(range(1, 31), ["easy", "medium", "hard"] * 10)]
    (data / "algebra.jsonl").write_text("\n".join(map(json.dumps, algebra)))
    pd.DataFrame([{"description": f"Write add{i}(a, b) returning a + b + {i}.", "asserts": [f"assert add{i}(1, 2) == {3 + i}"],
                   "fn_name": f"add{i}"} for i in range(30)]).to_parquet(data / "functions.parquet")
    ifrows = [{"prompt": f"Write two sentences about topic {i}.", "instruction_id_list": ["change_case:english_lowercase"],
               "kwargs": [{}]} for i in range(30)]
    (data / "if.jsonl").write_text("\n".join(map(json.dumps, ifrows)))
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}+2?"},
                           {"role": "assistant", "content": str(i + 2)}]} for i in range(30)]
    (data / "chats.jsonl").write_text("\n".join(map(json.dumps, chats)))
    shots = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    fewshot = [{"chat": [*shots, {"role": "user", "content": f"{i}+3?"}], "gold": i + 3} for i in range(30)]
    (data / "fewshot.jsonl").write_text("\n".join(map(json.dumps, fewshot)))
    (root / "my_rewards.py").write_text(REWARDS)


def test_the_page_has_an_example_per_domain():
    assert set(doc_recipes()) == {"math_mine.yaml", "code_mine.yaml", "if_mine.yaml", "sft_mine.yaml"}


@pytest.mark.parametrize("name", sorted(doc_recipes()))
def test_each_example_passes_check(name, tmp_path, monkeypatch, capsys):
    write_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / name).write_text(doc_recipes()[name])
    assert main(["check", name]) == 0, capsys.readouterr().err
