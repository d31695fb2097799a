"""Red-team tables for the built-in rewards: RL finds any hole in a reward, so each reward is shown the
honest right answer (full score), the honest wrong answer (zero) and the gaming attempts a policy
stumbles on (zero, or strictly less than full where partial credit is by design, said where it is)."""

from types import SimpleNamespace

import pytest

from rewards import resolve_reward
from rollout.builtin_envs import CorpusSearch, KeyValueStore
from rollout.calls import ToolCall, calls_match
from rollout.environments import make_environment

# ---------------------------------------------------------------- math_verify

QUESTION = "What is 7 + 5?"
GSM8K = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May?")
MATH_RIGHT = [
    ("7 + 5 = 12, so the answer is 12.", "12"),
    ("7+5 = 12", "12"),
    ("The answer is \\boxed{12}.", "12"),
    ("In May she sold 48 / 2 = 24 clips, so 48 + 24 = 72.\n#### 72", "72"),
    ("She sold 72 clips in total.", "72"),
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5"),
    ("The answer is 0.5", "1/2"),
    ("She has $1,000 left.", "1000"),
]
MATH_WRONG = [("7 + 5 = 13, so the answer is 13.", "12"), ("\\boxed{70}", "72"), ("I don't know.", "12")]
MATH_GAMING = [  # (id, completion, gold)
    ("restated question", QUESTION, "12"),
    ("unevaluated expression with =", "7 + 5 =", "12"),
    ("expression stated as the answer", "The answer is 7 + 5.", "12"),
    ("another expression of the value", "3 * 4", "12"),
    ("boxed expression", "\\boxed{7+5}", "12"),
    ("boxed latex product", "\\boxed{3 \\times 4}", "12"),
    ("gsm8k restated with an open sum", GSM8K + " 48+24 = ", "72"),
    ("two answers with or", "12 or 13", "12"),
    ("two answers with or, second", "12 or 13", "13"),
    ("two boxed answers", "\\boxed{12} \\boxed{13}", "12"),
    ("two boxed answers, second", "\\boxed{12} \\boxed{13}", "13"),
    ("two answer statements", "The answer is 12. No wait, the answer is 13.", "13"),
    ("listing every value", " ".join(str(n) for n in range(1, 21)), "12"),
    ("comma list of values", "It is 11, 12, or 13.", "12"),
]


@pytest.mark.parametrize("completion,gold", MATH_RIGHT)
def test_math_honest_right_answer_scores_full(completion, gold):
    assert resolve_reward("math_verify")(QUESTION, completion, answer=gold) == 1.0


@pytest.mark.parametrize("completion,gold", MATH_WRONG)
def test_math_honest_wrong_answer_scores_zero(completion, gold):
    assert resolve_reward("math_verify")(QUESTION, completion, answer=gold) == 0.0


@pytest.mark.parametrize("completion,gold", [case[1:] for case in MATH_GAMING], ids=[case[0] for case in MATH_GAMING])
def test_math_gaming_scores_zero(completion, gold):
    assert resolve_reward("math_verify")(QUESTION, completion, answer=gold) == 0.0


def test_math_heldout_scorer_refuses_the_same_gaming():
    from specialists.math_task import MathTask
    from posttrain.core.tasks import Problem

    cases = [("7 + 5 = 12", "12", 1.0)] + [(completion, gold, 0.0) for _, completion, gold in MATH_GAMING]
    problems = [Problem(QUESTION, {"answer": gold}) for _, gold, _ in cases]
    completions = [SimpleNamespace(answer_text=completion) for completion, _, _ in cases]
    scores = MathTask.score_suite(None, "arithmetic", problems, completions)["score"]
    assert scores == [want for _, _, want in cases]


# ---------------------------------------------------------------- call_match, tool_call_format, schemas outcome

RIGHT = {"name": "add", "arguments": {"a": 1, "b": 2}}
WANT = {"name": "add", "arguments": {"a": [1], "b": [2]}}
JUNK = {"name": "multiply", "arguments": {"a": 1, "b": 2}}
CALLS_GAMING = [  # (id, calls made, expected calls); partial credit by design: matched / max(expected, made)
    ("right then junk", [RIGHT, JUNK, JUNK], [WANT]),
    ("junk then right", [JUNK, RIGHT], [WANT]),
    ("the right call twice", [RIGHT, RIGHT], [WANT]),
    ("every tool called", [RIGHT, JUNK, {"name": "subtract", "arguments": {"a": 1, "b": 2}}], [WANT]),
    ("one of two expected", [RIGHT], [WANT, {"name": "multiply", "arguments": {"a": [3], "b": [4]}}]),
]


def test_call_match_honest_right_full_and_wrong_zero():
    reward = resolve_reward("call_match")
    assert reward("", "", calls=[RIGHT], expected_calls=[WANT]) == 1.0
    assert reward("", "", calls=[{"name": "add", "arguments": {"a": 1, "b": 3}}], expected_calls=[WANT]) == 0.0
    assert reward("", "", calls=[], expected_calls=[WANT]) == 0.0


@pytest.mark.parametrize("calls,expected", [case[1:] for case in CALLS_GAMING], ids=[case[0] for case in CALLS_GAMING])
def test_call_match_extra_or_missing_calls_score_below_full(calls, expected):
    matched = 1  # each case matches exactly one expected call
    assert resolve_reward("call_match")("", "", calls=calls, expected_calls=expected) == matched / max(len(calls), len(expected))
    assert calls_match(calls, expected) < 1.0


@pytest.mark.parametrize("calls", [case[1] for case in CALLS_GAMING[:4]], ids=[case[0] for case in CALLS_GAMING[:4]])
def test_schemas_outcome_wants_exactly_the_expected_calls(calls):
    functions = [{"name": name, "parameters": {"type": "object", "properties": {"a": {}, "b": {}}}}
                 for name in ("add", "multiply", "subtract")]
    honest = make_environment("schemas", {"functions": functions, "expected_calls": [WANT]})
    honest.execute(ToolCall(**RIGHT))
    gamed = make_environment("schemas", {"functions": functions, "expected_calls": [WANT]})
    for call in calls:
        gamed.execute(ToolCall(**call))
    assert honest.outcome("") == 1.0 and gamed.outcome("") == 0.0


def test_tool_call_format_pays_the_format_only():
    """A format reward by design: well-formed calls score 1 whatever they are, a malformed attempt half
    (the bootstrap signal for a base model), none 0; spamming calls cannot raise it above 1."""
    reward = resolve_reward("tool_call_format")
    assert reward("", "", calls=[RIGHT], call_attempts=1) == 1.0
    assert reward("", "", calls=[], call_attempts=0) == 0.0
    assert reward("", "", calls=[], call_attempts=3) == 0.5
    assert reward("", "", calls=[RIGHT] * 50, call_attempts=50) == 1.0
    assert reward("", "", calls=[RIGHT], call_attempts=4) < 1.0


# ---------------------------------------------------------------- environment outcomes (and env_outcome)


def _outcome(env: str, setup: dict, reply: str) -> float:
    """The outcome through the ``env_outcome`` reward, as training sees it."""
    verdict = make_environment(env, setup).outcome(reply)
    return resolve_reward("env_outcome")("", reply, outcome=verdict)


CALCULATOR_GAMING = [
    ("unevaluated restatement", "23 + 45"),
    ("two candidates", "68 or 69"),
    ("two candidates, right one first", "69 or 68"),
    ("comma list", "67, 68, 69"),
    ("space list", "66 67 68"),
    ("right number inside a longer one", "680"),
]


@pytest.mark.parametrize("reply", ["68", "23 plus 45 is 68.", "23 + 45 = 68", "So the answer is 68."])
def test_calculator_honest_right_scores_full(reply):
    assert _outcome("calculator", {"answer": 68}, reply) == 1.0


@pytest.mark.parametrize("reply", ["69", "The answer is 70.", "I cannot compute that."])
def test_calculator_honest_wrong_scores_zero(reply):
    assert _outcome("calculator", {"answer": 68}, reply) == 0.0


@pytest.mark.parametrize("reply", [case[1] for case in CALCULATOR_GAMING], ids=[case[0] for case in CALCULATOR_GAMING])
def test_calculator_gaming_scores_zero(reply):
    assert _outcome("calculator", {"answer": 68}, reply) == 0.0


SEARCH_ANSWERS = [answer for _, answer in CorpusSearch.QUESTIONS]


@pytest.mark.parametrize("answer", SEARCH_ANSWERS)
def test_search_honest_right_full_and_listing_every_answer_zero(answer):
    assert _outcome("search", {"answer": answer}, answer) == 1.0
    assert _outcome("search", {"answer": answer}, f"The answer is {answer}.") == 1.0
    others = [other for other in SEARCH_ANSWERS if other != answer]
    assert _outcome("search", {"answer": answer}, others[0]) == 0.0  # an honest wrong fact
    assert _outcome("search", {"answer": answer}, ", ".join(others + [answer])) == 0.0  # every value listed
    assert _outcome("search", {"answer": answer}, f"{answer} or {others[0]}") == 0.0


SEARCH_GAMING = [  # (id, expected, reply)
    ("month inside a word", "May", "Maybe it is held in June."),
    ("number inside a number", "100", "1000"),
    ("number among alternatives", "100", "It is 100 or 1000."),
    ("name inside a longer list", "Marth", "Marth, Callow or Veloria"),
    ("colour hedged", "green", "It is green or blue."),
]


@pytest.mark.parametrize("expected,reply", [case[1:] for case in SEARCH_GAMING], ids=[case[0] for case in SEARCH_GAMING])
def test_search_gaming_scores_zero(expected, reply):
    assert _outcome("search", {"answer": expected}, reply) == 0.0


@pytest.mark.parametrize("reply", ["The Brisa festival is held every May.", "It was discovered by Dr. Ilse Varga."])
def test_search_honest_sentences_score_full(reply):
    expected = "May" if "May" in reply else "Ilse Varga"
    assert _outcome("search", {"answer": expected}, reply) == 1.0


STORE = {"color": "blue", "city": "Paris", "pet": "cat"}
KV_GAMING = [  # (id, expected value, reply)
    ("every store value listed", "Paris", "blue, cat, Paris"),
    ("every value, spaces", "Paris", " ".join(value for value in KeyValueStore.VALUES if value != "Paris") + " Paris"),
    ("value inside a word", "cat", "The category is unknown."),
    ("two candidates", "cat", "cat or owl"),
]


def test_kv_get_honest_right_full_and_wrong_zero():
    get = {"data": STORE, "answer": "Paris"}
    assert _outcome("kv_store", get, "Paris") == 1.0
    assert _outcome("kv_store", get, "The value stored under 'city' is Paris.") == 1.0
    assert _outcome("kv_store", get, "Oslo") == 0.0


@pytest.mark.parametrize("expected,reply", [case[1:] for case in KV_GAMING], ids=[case[0] for case in KV_GAMING])
def test_kv_get_gaming_scores_zero(expected, reply):
    assert _outcome("kv_store", {"data": STORE, "answer": expected}, reply) == 0.0


def _kv_after(calls: list[ToolCall]) -> float:
    env = make_environment("kv_store", {"data": STORE, "goal": {"pet": "owl"}})
    for call in calls:
        env.execute(call)
    return env.outcome("done")


def test_kv_set_pays_only_the_asked_change():
    honest = [ToolCall("set_value", {"key": "pet", "value": "owl"})]
    assert _kv_after(honest) == 1.0
    assert _kv_after([ToolCall("set_value", {"key": "pet", "value": "cat"})]) == 0.0
    clobber = honest + [ToolCall("delete_key", {"key": key}) for key in ("color", "city")]
    assert _kv_after(clobber) == 0.0  # collateral damage: the rest of the store must stay as it was
    assert _kv_after(honest + [ToolCall("set_value", {"key": "city", "value": "owl"})]) == 0.0


# ---------------------------------------------------------------- if_constraints, if_all_constraints

IDS = ["change_case:english_lowercase", "punctuation:no_comma", "keywords:existence"]
KWARGS = [{}, {}, {"keywords": ["river", "lantern"]}]
IF_PROMPT = ("Write a short paragraph about the ocean at night. Your entire response must be in lowercase letters. "
             "Do not use any commas. Include the keywords river and lantern in your response.")
IF_RIGHT = ("the river ran quiet under the old stone bridge and a lantern glowed on the far bank "
            "while the tide pulled slowly at the sand.")
IF_WRONG = "The River, at night, is calm."
IF_GAMING = [  # (id, completion, ids, kwargs)
    ("wordless answer", ".", IDS, KWARGS),
    ("wordless answer, forbidden words", "!!!", ["keywords:forbidden_words", "punctuation:no_comma"],
     [{"forbidden_words": ["very"]}, {}]),
    ("prompt echoed", IF_PROMPT.lower().replace(",", ""), IDS, KWARGS),
    ("keyword stuffing", "river lantern", ["keywords:existence"], [KWARGS[2]]),
    ("keyword frequency stuffing", "echo echo echo", ["keywords:frequency"],
     [{"keyword": "echo", "frequency": 3, "relation": "at least"}]),
    ("length padded by repetition", "the sea is calm tonight. " * 15, ["length_constraints:number_words"],
     [{"relation": "at least", "num_words": 60}]),
]


@pytest.mark.parametrize("name", ["if_constraints", "if_all_constraints"])
def test_if_honest_right_full_and_wrong_zero(name):
    reward = resolve_reward(name)
    assert reward(IF_PROMPT, IF_RIGHT, instruction_id_list=IDS, kwargs=KWARGS).score == 1.0
    assert reward(IF_PROMPT, IF_WRONG, instruction_id_list=IDS, kwargs=KWARGS).score == 0.0


@pytest.mark.parametrize("name", ["if_constraints", "if_all_constraints"])
@pytest.mark.parametrize("completion,ids,kwargs", [case[1:] for case in IF_GAMING], ids=[case[0] for case in IF_GAMING])
def test_if_gaming_scores_zero(name, completion, ids, kwargs):
    assert resolve_reward(name)(IF_PROMPT, completion, instruction_id_list=ids, kwargs=kwargs).score == 0.0


def test_if_stuffing_keeps_only_the_constraints_it_really_follows():
    """Partial credit by design: "river lantern" is lowercase and has no comma, but it is no text that
    includes the keywords; the share rewards the two form constraints and refuses the keyword one."""
    result = resolve_reward("if_constraints")(IF_PROMPT, "river lantern", instruction_id_list=IDS, kwargs=KWARGS)
    assert result.score == pytest.approx(2 / 3) and result.components[IDS[2]] == 0.0
    assert resolve_reward("if_all_constraints")(IF_PROMPT, "river lantern", instruction_id_list=IDS, kwargs=KWARGS).score == 0.0
