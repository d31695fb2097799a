"""Tools, the call parser, environments, agent rewards and BFCL's checker (no engine)."""

import random
from typing import Literal

import pytest

from rewards import resolve_reward
from rollout.calls import ToolCall, call_matches, calls_match, parse_calls
from rollout.environments import (
    Environment,
    EnvTask,
    environment,
    environment_class,
    environment_names,
    make_environment,
)
from rollout.tools import tool


@tool
def book_room(city: str, nights: int, kind: Literal["single", "double"] = "single") -> str:
    """Book a hotel room.

    Args:
        city: where to stay
        nights: how many nights,
            at least one
        kind: the room type
    """
    return f"{kind} in {city} for {nights}"


def test_schema_comes_from_signature_and_docstring():
    schema = book_room.schema
    assert schema["name"] == "book_room" and schema["description"] == "Book a hotel room."
    params = schema["parameters"]
    assert params["required"] == ["city", "nights"]
    assert params["properties"]["nights"] == {"type": "integer", "description": "how many nights, at least one"}
    assert params["properties"]["kind"]["enum"] == ["single", "double"]
    assert params["properties"]["kind"]["default"] == "single"
    assert "title" not in str(params)


def test_tool_validates_arguments():
    assert book_room.call({"city": "Oslo", "nights": "2"}) == "single in Oslo for 2"
    for bad in ({"city": "Oslo"}, {"city": "Oslo", "nights": 1, "pets": True}, {"city": "Oslo", "nights": 1, "kind": "suite"}, [1]):
        with pytest.raises(ValueError, match="book_room"):
            book_room.call(bad)


def test_tool_needs_type_hints():
    def untyped(x):
        return x

    with pytest.raises(TypeError, match="needs a type hint"):
        tool(untyped)


CALL = ToolCall("add", {"a": 1, "b": 2})


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "add", "arguments": {"a": 1, "b": 2}}',
        'Sure, here it is:\n```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```\nHope that helps.',
        "{'name': 'add', 'arguments': {'a': 1, 'b': 2}}",
        '<tool_call>\n{"name": "add", "parameters": {"a": 1, "b": 2}}\n</tool_call>',
        '{"type": "function", "function": {"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}}',
        'I will call add. {"name": "add", "args": {"a": 1, "b": 2}} and then answer.',
        '[{"name": "add", "arguments": {"a": 1, "b": 2}}]',
    ],
)
def test_parser_tolerates_noise(text):
    parsed = parse_calls(text)
    assert parsed.calls == [CALL] and parsed.malformed is None


def test_parser_reads_lists_and_several_tags():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>[{"name": "b", "arguments": {"x": true, "y": null}}]</tool_call>'
    assert parse_calls(text).calls == [ToolCall("a", {}), ToolCall("b", {"x": True, "y": None})]


@pytest.mark.parametrize("text", ["The answer is 42.", '{"answer": 42}', "[1, 2, 3]", "", "I think {x} is fine."])
def test_parser_treats_non_calls_as_final_answers(text):
    assert parse_calls(text).is_final


@pytest.mark.parametrize(
    "text",
    ['{"name": "add", "arguments": {"a": 1', "<tool_call>add(1, 2)</tool_call>", '{"name": "add", "arguments": "a=1"}', "{oops"],
)
def test_parser_flags_malformed_calls(text):
    parsed = parse_calls(text)
    assert not parsed.calls and parsed.malformed


def test_call_matching_follows_bfcl_rules():
    expected = {"name": "f", "arguments": {"x": [3], "unit": ["cm", ""], "s": ["New York"]}}
    assert call_matches({"name": "f", "arguments": {"x": 3.0, "s": "new york"}}, expected)
    assert call_matches({"name": "f", "arguments": {"x": 3, "unit": "cm", "s": "New-York"}}, expected)
    assert not call_matches({"name": "f", "arguments": {"x": 4, "s": "New York"}}, expected)
    assert not call_matches({"name": "f", "arguments": {"x": 3}}, expected)  # s is required
    assert not call_matches({"name": "f", "arguments": {"x": 3, "s": "New York", "z": 1}}, expected)
    assert not call_matches({"name": "g", "arguments": {"x": 3, "s": "New York"}}, expected)
    assert not call_matches({"name": "f", "arguments": {"x": True, "s": "New York"}}, {"name": "f", "arguments": {"x": [1], "s": ["New York"]}})
    assert calls_match([{"name": "f", "arguments": {"x": 3, "s": "NY"}}], [expected, expected]) == 0.0
    assert calls_match([{"name": "search", "arguments": {"query": "anything"}}], [{"name": "search", "arguments": None}]) == 1.0


def test_environment_errors_come_back_as_results():
    env = make_environment("calculator", {"answer": 6})
    assert env.execute(ToolCall("multiply", {"a": 2, "b": 3})).content == "6.0"
    assert env.execute(ToolCall("divide", {"a": 1, "b": 0})).error == "tool_exception"
    assert env.execute(ToolCall("power", {"a": 1})).error == "unknown_tool"
    assert env.execute(ToolCall("add", {"a": "one", "b": 2})).error == "bad_arguments"
    assert env.outcome("So the answer is 6.") == 1.0 and env.outcome("7") == 0.0


def test_kv_store_state_decides_outcome():
    env = make_environment("kv_store", {"data": {"city": "Oslo"}, "goal": {"pet": "cat", "city": None}})
    assert env.outcome("done") == 0.0
    env.execute(ToolCall("set_value", {"key": "pet", "value": "cat"}))
    env.execute(ToolCall("delete_key", {"key": "city"}))
    assert env.outcome("done") == 1.0
    assert env.execute(ToolCall("get_value", {"key": "nope"})).error == "tool_exception"


def test_search_finds_the_fact():
    env = make_environment("search", {"answer": "Marth"})
    assert "Marth" in env.execute(ToolCall("search", {"query": "capital of Veloria"})).content


@pytest.mark.parametrize("name", ["calculator", "kv_store", "search", "api_call"])
def test_procedural_tasks_are_solved_by_their_expected_calls(name):
    rng = random.Random(0)
    for _ in range(20):
        task = environment_class(name).make_task(rng)
        env = make_environment(name, task.setup)
        for expected in task.expected_calls:
            allowed = expected["arguments"] or {"query": [task.question]}  # search: any query
            result = env.execute(ToolCall(expected["name"], {k: v[0] for k, v in allowed.items() if v[0] != ""}))
            assert result.error is None, result
        assert env.outcome(task.answer if task.answer is not None else "done") == 1.0, task


def test_registering_an_environment_is_short_and_names_are_unique():
    @environment("test_counter")
    class Counter(Environment):
        def __init__(self, target: int = 0):
            self.value, self.target = 0, target

        @tool
        def increment(self, by: int) -> int:
            """Add to the counter."""
            self.value += by
            return self.value

        @classmethod
        def make_task(cls, rng):
            return EnvTask("Count to 2.", {"target": 2})

        def outcome(self, final_answer):
            return float(self.value == self.target)

    env = make_environment("test_counter", {"target": 2})
    env.execute(ToolCall("increment", {"by": 2}))
    assert env.outcome("") == 1.0 and "test_counter" in environment_names()
    assert make_environment("test_counter").value == 0  # state is per episode
    with pytest.raises(ValueError, match="already registered"):
        environment("test_counter")(type("Other", (Environment,), {}))


def test_agent_rewards():
    fields = {"expected_calls": [{"name": "add", "arguments": {"a": [1], "b": [2]}}], "outcome": 1.0}
    calls = [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    assert resolve_reward("tool_call_format")("", "", calls=calls, call_attempts=2, **fields) == 0.75
    assert resolve_reward("tool_call_format")("", "", calls=calls, call_attempts=1, **fields) == 1.0
    assert resolve_reward("tool_call_format")("", "", calls=[], call_attempts=0, **fields) == 0.0
    assert resolve_reward("call_match")("", "", calls=calls, call_attempts=1, **fields) == 1.0
    assert resolve_reward("env_outcome")("", "", calls=calls, call_attempts=1, **fields) == 1.0


def test_bfcl_suites_score_with_bfcl_checker():
    from specialists import bfcl

    simple = bfcl.load_suite("bfcl_simple", 400)
    assert len(simple) == 400 and simple[0].id == "simple_python_0"
    assert bfcl.score(simple[0], [{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}])["score"] == 1.0
    assert bfcl.score(simple[0], [{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 6}}])["score"] == 0.0
    assert bfcl.score(simple[0], []) == {"score": 0.0, "format": 0.0}
    multiple = bfcl.load_suite("bfcl_multiple", 10)
    assert len(multiple) == 10 and all(p.fields["category"] == "multiple" for p in multiple)
    assert "float" not in str(multiple[0].fields["tools"]) and "'dict'" not in str(multiple[0].fields["tools"])
    import sys

    assert "bfcl_eval.constants.model_config" not in sys.modules  # the stand-in did not leak


def test_call_json_schema_admits_exactly_the_calls_the_tools_accept():
    import jsonschema
    from pydantic import BaseModel

    from rollout.tools import call_json_schema, tool

    class Point(BaseModel):
        x: int
        y: int

    @tool
    def move(to: Point, speed: float = 1.0) -> str:
        """Move somewhere."""
        return "ok"

    @tool
    def stop() -> str:
        """Stop."""
        return "stopped"

    schema = call_json_schema([move.schema, stop.schema])
    good = [{"name": "move", "arguments": {"to": {"x": 1, "y": 2}}}, {"name": "stop", "arguments": {}}]
    bad = [
        {"name": "move", "arguments": {"to": {"x": 1}}},  # a nested field missing
        {"name": "move", "arguments": {"to": {"x": 1, "y": 2}, "colour": "red"}},  # an unknown argument
        {"name": "fly", "arguments": {}},  # an unknown tool
        {"name": "stop"},  # no arguments object
    ]
    for call in good:
        jsonschema.validate(call, schema)
        assert {"move": move, "stop": stop}[call["name"]].validate(call["arguments"]) is not None
    for call in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(call, schema)
    with pytest.raises(ValueError, match="at least one function"):
        call_json_schema([])
    bfcl_style = {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "float"}, "y": {"type": "any"}}}}
    jsonschema.validate({"name": "f", "arguments": {"x": 1.5, "y": [1]}}, call_json_schema([bfcl_style]))


def test_schema_only_environments_get_a_call_schema_too():
    from rollout.tools import call_json_schema

    from rollout.api_tasks import ApiCall

    env = make_environment("api_call", ApiCall.make_task(random.Random(0)).setup)
    names = {option["properties"]["name"]["const"] for option in call_json_schema(env.schemas())["anyOf"]}
    assert names == {schema["name"] for schema in env.schemas()}


def test_forced_call_share_forces_the_first_episodes_of_each_group_in_training_only():
    from rollout.engine import SamplingSpec
    from specialists.agent_task import env_tasks, episode_envs

    train = env_tasks("calculator", seed=0, count=20, heldout=False, max_turns=3, forced_call_share=0.5)[:2]
    make_env = episode_envs(train, [SamplingSpec(n=4), SamplingSpec(n=3)])
    choices = [[make_env(index).tool_choice for _ in range(spec_n)] for index, spec_n in ((0, 4), (1, 3))]
    assert choices == [["required", "required", "auto", "auto"], ["required", "required", "auto"]]  # round(1.5) = 2
    heldout = env_tasks("calculator", seed=0, count=50, heldout=True, max_turns=3)
    assert episode_envs(heldout, [SamplingSpec(n=2)])(0).tool_choice == "auto"
