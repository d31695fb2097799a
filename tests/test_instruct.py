"""Instruction following: constraint checkers, the if_constraints reward, the procedural source, IFBench's scorer."""

import json
from types import SimpleNamespace

import pytest

from rewards import resolve_reward
from rewards.instruct import CHECKERS, check_constraints, count_sentences, follows
from specialists import data
from specialists.instruct_data import CONSTRAINT_SPECS, load_if_synth
from specialists.instruct_task import IFBENCH, ifbench_prompts, load_ifbench_rows, score_ifbench
from posttrain.core.tasks import Problem

# (id, kwargs, a response that follows it, one that does not)
CASES = [
    ("change_case:english_lowercase", {}, "all quiet here.", "All quiet here."),
    ("change_case:english_capital", {}, "ALL QUIET HERE.", "ALL QUIET Here."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 4}, "one two three", "one two three four"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "one two three", "one two"),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One. Two!", "One. Two? Three"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n\nSecond part.", "Only one.\nStill one."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro:\n* a\n- b", "* a\n* b\n* c"),
    ("keywords:existence", {"keywords": ["river", "maple"]}, "A maple by the river.", "A maple by the sea."),
    ("keywords:forbidden_words", {"forbidden_words": ["very"]}, "It is quite nice.", "It is Very nice."),
    ("keywords:frequency", {"keyword": "echo", "frequency": 2, "relation": "at least"}, "An echo, then another Echo!", "echo once"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<Morning Light>>\nText.", "<< >> no title"),
    ("detectable_format:multiple_sections", {"num_sections": 2, "section_spliter": "Part"}, "Part 1\nx\nPart 2\ny", "Part 1\nx"),
    ("startend:end_checker", {"end_phrase": "That is all."}, "Done. That is all.", "That is all. More."),
    ("startend:start_checker", {"first_word": "Imagine"}, "Imagine a world.", "Now imagine a world."),
    ("startend:quotation", {}, '"Quoted answer."', 'Quoted "answer."'),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\nP.S. see you", "P.S. first line only"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_content:number_placeholders", {"num_placeholders": 1}, "Send to [address].", "Send it."),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES)
def test_checker_passes_and_fails(instruction_id, kwargs, good, bad):
    assert follows(instruction_id, good, kwargs)
    assert not follows(instruction_id, bad, kwargs)


def test_every_checker_has_a_case():
    assert {case[0] for case in CASES} == set(CHECKERS)


def test_sentence_count_ignores_spacing_and_counts_a_trailing_run():
    assert count_sentences("  One.\n\nTwo!  three") == 3
    assert count_sentences("...") == 0


@pytest.mark.parametrize("completion", ["", "   ", None, 42, "\x00\ufffd🙂" * 50])
def test_garbage_completions_fail_constraints_without_raising(completion):
    result = resolve_reward("if_constraints")("p", completion, instruction_id_list=list(CHECKERS), kwargs=[{}] * len(CHECKERS))
    assert 0.0 <= result.score <= 1.0
    assert len(result.components) == len(CHECKERS)


def test_garbage_fields_fail_without_raising():
    reward = resolve_reward("if_constraints")
    assert reward("p", "text", instruction_id_list="not a list", kwargs=None).score == 0.0
    assert reward("p", "text").score == 0.0  # no constraints at all
    bad_kwargs = reward("p", "one two", instruction_id_list=["length_constraints:number_words"] * 3,
                        kwargs=[{"num_words": "many", "relation": "at least"}, "not a dict", {"relation": "about"}])
    assert bad_kwargs.score == 0.0 and len(bad_kwargs.components) == 3
    unknown = reward("p", "text", instruction_id_list=["no_such:constraint", "punctuation:no_comma"], kwargs=[{}, {}])
    assert unknown.components == {"no_such:constraint": 0.0, "punctuation:no_comma": 1.0}
    assert unknown.score == 0.5


def test_reward_is_share_and_all_or_nothing_variant():
    ids = ["change_case:english_lowercase", "punctuation:no_comma", "keywords:existence"]
    kwargs = [{}, {}, {"keywords": ["river"]}]
    share = resolve_reward("if_constraints")("p", "a calm sea, at dawn.", instruction_id_list=ids, kwargs=kwargs)
    assert share.score == pytest.approx(1 / 3)
    assert share.components == {ids[0]: 1.0, ids[1]: 0.0, ids[2]: 0.0}
    every = resolve_reward("if_all_constraints")
    assert every("p", "a calm sea, at dawn.", instruction_id_list=ids, kwargs=kwargs).score == 0.0
    assert every("p", "a calm river at dawn.", instruction_id_list=ids, kwargs=kwargs).score == 1.0


def test_ifbench_ids_are_checked_by_ifbench():
    ids, kwargs = ["count:word_count_range", "format:no_whitespace"], [{"min_words": 1, "max_words": 5}, {}]
    assert check_constraints("p", "HelloWorld", ids, kwargs) == {ids[0]: 1.0, ids[1]: 1.0}
    assert check_constraints("p", "Hello big world", ids, kwargs) == {ids[0]: 1.0, ids[1]: 0.0}


@pytest.fixture(scope="module")
def synth():
    return load_if_synth(seed=3, count=2000, min_constraints=1, max_constraints=3, excluded_prompts=ifbench_prompts())


def test_generator_is_deterministic_in_its_seed(synth):
    again = load_if_synth(seed=3, count=2000, min_constraints=1, max_constraints=3, excluded_prompts=ifbench_prompts())
    other = load_if_synth(seed=4, count=2000, min_constraints=1, max_constraints=3, excluded_prompts=ifbench_prompts())
    assert synth["question"] == again["question"]
    assert synth["question"] != other["question"]
    assert len(set(synth["question"])) == len(synth)


def test_generated_rows_are_consistent_checkable_and_conflict_free(synth):
    tags = {spec.instruction_id: spec.tags for spec in CONSTRAINT_SPECS}
    for row in synth:
        ids, kwargs = row["instruction_id_list"], json.loads(row["kwargs_json"])
        assert 1 <= len(ids) <= 3 and len(ids) == len(kwargs) == len(set(ids))
        for index, first in enumerate(ids):
            assert all(not (tags[first] & tags[second]) for second in ids[index + 1:])
            CHECKERS[first]("Some response text.", **kwargs[index])  # the drawn arguments fit the checker


def test_heldout_slice_is_disjoint_and_no_prompt_is_an_ifbench_prompt(synth):
    train = set(data.split_rows(synth, heldout=False)["question"])
    heldout = set(data.split_rows(synth, heldout=True)["question"])
    assert heldout and train and not train & heldout
    assert not (train | heldout) & ifbench_prompts()
    excluded = synth["question"][0]
    assert excluded not in load_if_synth(3, 2000, 1, 3, excluded_prompts=[excluded])["question"]


def _problem(row) -> Problem:
    return Problem(row["prompt"], {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]},
                   IFBENCH, id=str(row["key"]))


def test_ifbench_scorer_strict_loose_and_instruction_level():
    row = next(r for r in load_ifbench_rows() if r["instruction_id_list"] == ["count:keywords_multiple"])
    words = [row["kwargs"][0][f"keyword{i}"] for i in range(1, 6)]
    body = " ".join(" ".join([word] * count) for word, count in zip(words, [1, 2, 3, 5, 7]))
    two = Problem("Reply in at most five words without whitespace.",
                  {"instruction_id_list": ["count:word_count_range", "format:no_whitespace"],
                   "kwargs": [{"min_words": 1, "max_words": 5}, {}]}, IFBENCH, id="hand")
    problems = [_problem(row), _problem(row), _problem(row), two]
    responses = [body, f"Here is {words[0]}:\n{body}", "nothing", "Hello big world"]
    scores = score_ifbench(problems, responses)
    assert scores["score"] == [1.0, 0.0, 0.0, 0.0]
    assert scores["loose"] == [1.0, 1.0, 0.0, 0.0]  # loose drops the first line
    # IFBench's instruction level is a micro average: (1 + 0 + 0 + 1) / 5 instructions.
    assert sum(scores["instruction_strict"]) / 4 == pytest.approx(2 / 5)
    assert sum(scores["instruction_loose"]) / 4 == pytest.approx(3 / 5)


def test_instruct_task_suites_and_scores():
    from posttrain.core.schema import TaskConfig
    from posttrain.core.tasks import make_task

    cfg = TaskConfig(domain="instruct", sources=[{"kind": "if_synth", "count": 500}],
                     rewards=[{"name": "if_constraints"}], instruction="")
    task = make_task(cfg, seed=0)
    assert task.sample(5, 4)[0].question == make_task(cfg, seed=0).sample(5, 4)[0].question
    suites = task.heldout_suites(None, 7)
    assert list(suites) == ["if_synth(constraints=1-3)", IFBENCH]
    assert len(suites[IFBENCH]) == 7 and task.user_message(suites[IFBENCH][0]) == load_ifbench_rows()[0]["prompt"]
    with pytest.raises(ValueError, match="no held-out suite"):
        task.heldout_suites(["humaneval"], 3)
    synth = suites["if_synth(constraints=1-3)"]
    scores = task.score_suite("if_synth(constraints=1-3)", synth, [SimpleNamespace(answer_text="")] * len(synth))
    assert scores == {"score": [0.0] * len(synth), "constraint_share": [0.0] * len(synth)}


def test_ifbench_imports_offline_without_leaving_a_spacy_stand_in():
    import importlib.util
    import sys

    from rewards.ifbench_lib import ifbench_modules

    assert "count:keywords_multiple" in ifbench_modules().registry.INSTRUCTION_DICT
    if importlib.util.find_spec("spacy") is None:
        assert "spacy" not in sys.modules


def test_missing_nltk_data_fails_with_a_clear_message(tmp_path, monkeypatch):
    import nltk

    from rewards.ifbench_lib import NltkDataMissing, ensure_nltk_data

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: False)
    with pytest.raises(NltkDataMissing, match="punkt_tab.*nltk.downloader"):
        ensure_nltk_data()
