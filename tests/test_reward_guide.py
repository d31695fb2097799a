"""docs/rewards.md's example runs as written: the plugin, the recipe lines, the scoring snippet."""

import re
import sys
from pathlib import Path

import yaml

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "rewards.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_guide_plugin_scores_as_documented(tmp_path, monkeypatch, capsys):
    plugin, trying = _blocks("python")
    (tmp_path / "my_rewards.py").write_text(plugin)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    exec(compile(trying, "docs/rewards.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[1.0, 0.5, 0.0]")
    assert "cites_answer_and_is_short/short" in printed


def test_the_guide_recipe_lines_validate(tmp_path, monkeypatch):
    from posttrain.recipe import validate_recipe

    plugin = _blocks("python")[0]
    (tmp_path / "my_rewards.py").write_text(plugin.replace('@reward("cites_answer_and_is_short")', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    section = yaml.safe_load(_blocks("yaml")[0])["task"]
    section["rewards"] = section["rewards"][:2]  # the third is an installed package's entry point
    recipe = validate_recipe({"task": {"sources": [{"kind": "arithmetic"}], **section}})
    assert [spec.timeout_s for spec in recipe.task.rewards] == [30.0, 5]
